package cluster

import (
	"log/slog"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/eddyrt/eddy/internal/testkit"
)

// gossipTestLogger routes slog to t.Log (shown only when a test fails or with
// -v) until the test ends; later lines, from goroutines memberlist or raft
// have not stopped yet, are dropped. EDDY_TEST_DEBUG=1 adds Debug.
func gossipTestLogger(t testing.TB) *slog.Logger {
	level := slog.LevelInfo
	if os.Getenv("EDDY_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	// Called before the node starts: the writer's cleanup runs after its shutdown.
	return testkit.LoggerAt(t, level)
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
