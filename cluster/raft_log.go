package cluster

import (
	"context"
	"io"
	"log"
	"log/slog"

	"github.com/hashicorp/go-hclog"
)

// raftLogger is an hclog.Logger (what hashicorp/raft logs to) that writes to
// slog. Names become a "logger" attribute, levels map one to one, and
// hclog's Trace goes below slog's Debug.
type raftLogger struct {
	base    *slog.Logger // without name or implied args
	l       *slog.Logger
	name    string
	implied []any
}

var _ hclog.Logger = (*raftLogger)(nil)

func newRaftLogger(l *slog.Logger) *raftLogger {
	return &raftLogger{base: l, l: l}
}

// raftQuietMessages are logged by raft on every heartbeat timeout while a
// node waits to be added to a cluster: normal during formation, so Debug.
var raftQuietMessages = map[string]bool{
	"no known peers, aborting election":                   true,
	"not part of stable configuration, aborting election": true,
}

func (h *raftLogger) derive(name string, implied []any) *raftLogger {
	l := h.base
	if name != "" {
		l = l.With("logger", name)
	}
	if len(implied) > 0 {
		l = l.With(implied...)
	}
	return &raftLogger{base: h.base, l: l, name: name, implied: implied}
}

func raftSlogLevel(level hclog.Level) slog.Level {
	switch level {
	case hclog.Trace:
		return levelTrace
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	}
	return slog.LevelInfo
}

func (h *raftLogger) Log(level hclog.Level, msg string, args ...any) {
	if level == hclog.Off {
		return
	}
	lv := raftSlogLevel(level)
	if raftQuietMessages[msg] {
		lv = slog.LevelDebug
	}
	h.l.Log(context.Background(), lv, msg, args...)
}

func (h *raftLogger) Trace(msg string, args ...any) { h.Log(hclog.Trace, msg, args...) }
func (h *raftLogger) Debug(msg string, args ...any) { h.Log(hclog.Debug, msg, args...) }
func (h *raftLogger) Info(msg string, args ...any)  { h.Log(hclog.Info, msg, args...) }
func (h *raftLogger) Warn(msg string, args ...any)  { h.Log(hclog.Warn, msg, args...) }
func (h *raftLogger) Error(msg string, args ...any) { h.Log(hclog.Error, msg, args...) }

func (h *raftLogger) enabled(l slog.Level) bool { return h.l.Enabled(context.Background(), l) }

func (h *raftLogger) IsTrace() bool { return h.enabled(levelTrace) }
func (h *raftLogger) IsDebug() bool { return h.enabled(slog.LevelDebug) }
func (h *raftLogger) IsInfo() bool  { return h.enabled(slog.LevelInfo) }
func (h *raftLogger) IsWarn() bool  { return h.enabled(slog.LevelWarn) }
func (h *raftLogger) IsError() bool { return h.enabled(slog.LevelError) }

func (h *raftLogger) ImpliedArgs() []any { return h.implied }

func (h *raftLogger) With(args ...any) hclog.Logger {
	implied := append(append([]any(nil), h.implied...), args...)
	return h.derive(h.name, implied)
}

func (h *raftLogger) Name() string { return h.name }

func (h *raftLogger) Named(name string) hclog.Logger {
	if h.name != "" {
		name = h.name + "." + name
	}
	return h.derive(name, h.implied)
}

func (h *raftLogger) ResetNamed(name string) hclog.Logger { return h.derive(name, h.implied) }

// SetLevel is a no-op: the slog handler decides what is logged.
func (h *raftLogger) SetLevel(hclog.Level) {}

func (h *raftLogger) GetLevel() hclog.Level {
	for _, l := range []hclog.Level{hclog.Trace, hclog.Debug, hclog.Info, hclog.Warn, hclog.Error} {
		if h.enabled(raftSlogLevel(l)) {
			return l
		}
	}
	return hclog.Off
}

func (h *raftLogger) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(h.StandardWriter(opts), "", 0)
}

func (h *raftLogger) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	w := stdLogWriter{l: h.l, level: slog.LevelInfo}
	if opts != nil && opts.ForceLevel != hclog.NoLevel {
		w.level = raftSlogLevel(opts.ForceLevel)
	}
	return w
}
