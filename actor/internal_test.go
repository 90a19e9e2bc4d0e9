package actor

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestBackoffDoublesUpToMax(t *testing.T) {
	c := SupervisorConfig{MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}.withDefaults()
	want := []time.Duration{10, 20, 40, 80, 100, 100}
	for i, w := range want {
		if got := c.backoff(i); got != w*time.Millisecond {
			t.Errorf("backoff(%d) = %v; want %v", i, got, w*time.Millisecond)
		}
	}
	if got := c.backoff(1 << 20); got != 100*time.Millisecond {
		t.Errorf("backoff after very many failures = %v; want the cap", got)
	}
}

func TestSupervisorDefaultsFillZeroFields(t *testing.T) {
	c := SupervisorConfig{MinBackoff: time.Minute}.withDefaults()
	if c.MaxBackoff != time.Minute || c.ResetAfter != DefaultSupervisorConfig().ResetAfter {
		t.Fatalf("withDefaults = %+v", c)
	}
}

func TestMailboxRingKeepsOrderAcrossGrowthAndWrap(t *testing.T) {
	m := newMailbox(40)
	ctx := context.Background()
	next, want := 0, 0
	push := func(k int) {
		for range k {
			if err := m.push(ctx, envelope{msg: next}, false); err != nil {
				t.Fatalf("push %d: %v", next, err)
			}
			next++
		}
	}
	pop := func(k int) {
		for range k {
			e, ok, _ := m.pop()
			if !ok || e.msg != want {
				t.Fatalf("pop = %v, %v; want %d", e.msg, ok, want)
			}
			want++
		}
	}
	push(10)
	pop(7)
	push(30) // grows while the head is not at index 0
	pop(20)
	push(27) // exactly full
	if err := m.push(ctx, envelope{msg: -1}, false); !errors.Is(err, ErrMailboxFull) {
		t.Fatalf("push beyond limit = %v; want ErrMailboxFull", err)
	}
	pop(m.len())
	left := m.drainClosed()
	if len(left) != 0 {
		t.Fatalf("drainClosed of an empty mailbox = %d envelopes", len(left))
	}
	if err := m.push(ctx, envelope{}, true); !errors.Is(err, ErrStopped) {
		t.Fatalf("push after close = %v; want ErrStopped", err)
	}
}
