package cluster

import (
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// gossipTestLogger routes slog to t.Log (shown only when a test fails or with
// -v) until the test ends; later lines, from goroutines memberlist or raft
// have not stopped yet, are dropped. EDDY_TEST_DEBUG=1 adds Debug.
func gossipTestLogger(t testing.TB) *slog.Logger {
	w := &gossipTestLogWriter{t: t}
	t.Cleanup(w.close) // registered before any node: runs after every node is shut down
	level := slog.LevelInfo
	if os.Getenv("EDDY_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

type gossipTestLogWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *gossipTestLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *gossipTestLogWriter) close() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// gossipTestWaitFor polls cond until it holds, failing the test after timeout.
func gossipTestWaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// gossipTestFreePort returns a loopback port that is free for TCP and UDP
// right now, for a node that must be reachable before it starts (a seed) or
// that restarts on the same port.
func gossipTestFreePort(t testing.TB) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port))
		l.Close()
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no free port for TCP and UDP")
	return 0
}

// gossipTestAwaitEvent reads events until one matches, failing after timeout.
func gossipTestAwaitEvent(t testing.TB, events <-chan MemberEvent, timeout time.Duration, what string, match func(MemberEvent) bool) MemberEvent {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatalf("event channel closed while waiting for %s", what)
			}
			if match(ev) {
				return ev
			}
		case <-timer.C:
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
	}
}

// gossipTestAwaitClosed drains events until the channel is closed, failing
// after a second.
func gossipTestAwaitClosed(t testing.TB, events <-chan MemberEvent) {
	t.Helper()
	timer := time.NewTimer(time.Second)
	defer timer.Stop()
	for {
		select {
		case _, ok := <-events:
			if !ok {
				return
			}
		case <-timer.C:
			t.Fatal("event channel not closed")
		}
	}
}
