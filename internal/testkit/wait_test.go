package testkit

import (
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fatalTB records Fatalf and ends the goroutine as testing.T's Fatalf does.
type fatalTB struct {
	testing.TB
	fatal string
}

func (f *fatalTB) Helper() {}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// waitForDouble runs WaitFor on a fatalTB in a goroutine of its own (Fatalf
// ends it) and returns what Fatalf said, "" when WaitFor returned.
func waitForDouble(t *testing.T, timeout time.Duration, what string, cond func() bool) string {
	f := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		WaitFor(f, timeout, what, cond)
	}()
	<-done
	return f.fatal
}

func TestWaitForReturnsOnceTheConditionHolds(t *testing.T) {
	var calls atomic.Int32
	start := time.Now()
	if msg := waitForDouble(t, 5*time.Second, "the third call", func() bool { return calls.Add(1) == 3 }); msg != "" {
		t.Fatalf("WaitFor failed: %s", msg)
	}
	if n := calls.Load(); n != 3 {
		t.Fatalf("cond called %d times, want 3: WaitFor went on after it held", n)
	}
	// Two polls at the shortest intervals: 1 ms and 2 ms, far from the timeout.
	if d := time.Since(start); d > time.Second {
		t.Fatalf("took %v for a condition that held at the third poll", d)
	}
}

func TestWaitForFailsNamingWhatAndTheTimeout(t *testing.T) {
	const timeout = 30 * time.Millisecond
	start := time.Now()
	var last time.Time
	msg := waitForDouble(t, timeout, "the moon to turn blue", func() bool { last = time.Now(); return false })
	if d := time.Since(start); d < timeout {
		t.Errorf("gave up after %v, before the timeout of %v", d, timeout)
	}
	if last.Sub(start) < timeout {
		t.Errorf("the last call of cond was %v after the start, before the timeout", last.Sub(start))
	}
	if !strings.Contains(msg, "the moon to turn blue") || !strings.Contains(msg, timeout.String()) {
		t.Errorf("Fatalf said %q; want what and the timeout", msg)
	}
}

// The interval grows to pollMax and no further: a condition is seen within
// pollMax of holding (plus scheduling; an interval that doubled without a
// bound would see this one 200 ms late).
func TestWaitForPollsAtMostPollMaxApart(t *testing.T) {
	holdsAt := time.Now().Add(300 * time.Millisecond)
	var seen time.Time
	WaitFor(t, 5*time.Second, "300 ms to pass", func() bool {
		seen = time.Now()
		return seen.After(holdsAt)
	})
	if late := seen.Sub(holdsAt); late > 100*time.Millisecond {
		t.Errorf("saw the condition %v after it held; want within about %v", late, pollMax)
	}
}
