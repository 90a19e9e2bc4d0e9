package cluster

import (
	"context"
	"log"
	"log/slog"
	"strings"
)

// newStdLogger returns a standard *log.Logger, the kind memberlist (and
// raft's StandardLogger) writes to, whose lines become slog records.
func newStdLogger(l *slog.Logger) *log.Logger {
	return log.New(stdLogWriter{l: l, level: slog.LevelInfo}, "", 0)
}

// stdLogWriter turns lines such as "[WARN] memberlist: Refuting a suspect
// message" into slog records at the level the prefix names; a line without a
// prefix gets level.
type stdLogWriter struct {
	l     *slog.Logger
	level slog.Level
}

func (w stdLogWriter) Write(p []byte) (int, error) {
	line := strings.TrimRight(string(p), "\r\n")
	level, msg := w.level, line
	if strings.HasPrefix(line, "[") {
		if end := strings.IndexByte(line, ']'); end > 0 {
			if lv, ok := stdLogLevels[line[1:end]]; ok {
				level, msg = lv, strings.TrimLeft(line[end+1:], " ")
			}
		}
	}
	if !w.l.Enabled(context.Background(), level) {
		return len(p), nil
	}
	msg = strings.TrimPrefix(msg, "memberlist: ")
	w.l.Log(context.Background(), level, msg)
	return len(p), nil
}

// levelTrace is hclog's and memberlist's TRACE, below slog's Debug.
const levelTrace = slog.LevelDebug - 4

var stdLogLevels = map[string]slog.Level{
	"TRACE": levelTrace,
	"DEBUG": slog.LevelDebug,
	"INFO":  slog.LevelInfo,
	"WARN":  slog.LevelWarn,
	"ERR":   slog.LevelError,
	"ERROR": slog.LevelError,
}
