package actor

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// A series of failures is logged on its first failure and then once every
// failureLogEvery, saying how long it has lasted; the others only at Debug.
func TestFailureSeriesLogsStayReadable(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	var l failureLog
	l.begin()
	err := errors.New("nats: no servers available")
	for i := range 50 {
		l.failed(log, err, i+1, 2*time.Second)
	}
	if n := strings.Count(buf.String(), "\n"); n != 1 || !strings.Contains(buf.String(), "actor failed; restarting") {
		t.Fatalf("50 failures in a burst logged %d lines, want 1:\n%s", n, buf.String())
	}
	l.lastLine = l.lastLine.Add(-failureLogEvery) // as if failureLogEvery had passed
	l.failed(log, err, 51, 2*time.Second)
	if !strings.Contains(buf.String(), "actor still failing") || !strings.Contains(buf.String(), "failures=51") {
		t.Fatalf("no summary line after failureLogEvery:\n%s", buf.String())
	}
	l.begin() // a new series starts over
	l.failed(log, err, 52, time.Second)
	if n := strings.Count(buf.String(), "actor failed; restarting"); n != 2 {
		t.Fatalf("a new series' first failure was not logged:\n%s", buf.String())
	}
}
