package testkit

import (
	"testing"
	"time"
)

// Polling intervals of WaitFor: the first poll comes soon, for conditions
// that hold within a millisecond (an actor's goroutine exits), and the
// interval grows to pollMax, so that a condition that takes seconds (a
// cluster settles) is not asked hundreds of times a second yet is seen
// within 10 ms of holding.
const (
	pollMin = time.Millisecond
	pollMax = 10 * time.Millisecond
)

// WaitFor returns once cond returns true, asking it at once and then every
// few milliseconds. If cond has not returned true by timeout after the call,
// WaitFor fails the test with t.Fatalf, naming what and the timeout; it gives
// up only on a false that cond returned after the timeout had passed, so a
// condition that holds in time is never reported as timed out. cond runs on
// the caller's goroutine, one call at a time.
//
// WaitFor is for conditions that no channel announces (a status, a count
// read over the network); where an event is announced on a channel, wait on
// the channel. Like t.Fatalf, it must be called from the test's goroutine.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	interval := pollMin
	for !cond() {
		left := time.Until(deadline)
		if left < 0 {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
			return // t is a double whose Fatalf returns
		}
		time.Sleep(min(interval, left))
		interval = min(interval*2, pollMax)
	}
}
