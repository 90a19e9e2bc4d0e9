package testkit

import (
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// LogWriter returns a writer that passes each write to t.Log (trailing
// newline trimmed), so that what a test's components log shows only when the
// test fails or runs with -v. Once the test's cleanup has run, writes are
// dropped: a goroutine that outlives its test (a memberlist probe, a raft
// heartbeat that is still stopping) may keep writing without the panic
// "Log in goroutine after Test... has completed", and, the writer being
// guarded by a mutex, without a data race with the end of the test.
//
// Writes never fail and are safe from any goroutine. Call LogWriter before
// starting what writes to it: cleanups run last-registered first, so its own
// then runs after theirs, and lines logged while they stop still show.
func LogWriter(t testing.TB) io.Writer {
	w := &logWriter{t: t}
	t.Cleanup(w.close)
	return w
}

// logWriter forwards to t.Log until close.
type logWriter struct {
	mu     sync.Mutex
	t      testing.TB
	closed bool // the test's cleanup ran: t.Log may panic
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *logWriter) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
}

// Logger returns a text logger at Debug level writing to LogWriter(t): the
// logger most tests hand to what they start. Call it before starting what
// logs to it, as for LogWriter.
func Logger(t testing.TB) *slog.Logger {
	return LoggerAt(t, slog.LevelDebug)
}

// LoggerAt is Logger that drops records below level: for tests whose
// components are chatty at Debug (raft, memberlist, a whole node).
func LoggerAt(t testing.TB, level slog.Leveler) *slog.Logger {
	return slog.New(slog.NewTextHandler(LogWriter(t), &slog.HandlerOptions{Level: level}))
}
