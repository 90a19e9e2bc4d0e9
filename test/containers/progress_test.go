//go:build containers

package containers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// progress samples /v1/cluster every 250 ms, from the first node that
// answers, and keeps each partition's last commit and the longest interval
// between two of its successive commits it saw (a gap longer than the
// sampling period is seen as such; a shorter one shows as at most ~250 ms).
type progress struct {
	c *dockerCluster

	mu   sync.Mutex
	last map[string]time.Time     // "type/p" -> its last commit seen
	gap  map[string]time.Duration // "type/p" -> the longest interval between commits

	stop func()
}

func watchProgress(c *dockerCluster) *progress {
	w := &progress{c: c, last: map[string]time.Time{}, gap: map[string]time.Duration{}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			w.sample(ctx)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})
	w.stop = func() { cancel(); wg.Wait() }
	c.t.Cleanup(w.stop)
	return w
}

func (w *progress) sample(ctx context.Context) {
	for _, n := range w.c.nodes {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := w.c.clusterStatus(ctx, n)
		cancel()
		if err != nil {
			continue
		}
		w.mu.Lock()
		for _, p := range st.Partitions {
			k := fmt.Sprintf("%s/%d", p.Type, p.Partition)
			if prev := w.last[k]; p.LastCommit.After(prev) {
				if !prev.IsZero() {
					w.gap[k] = max(w.gap[k], p.LastCommit.Sub(prev))
				}
				w.last[k] = p.LastCommit
			}
		}
		w.mu.Unlock()
		return
	}
}

// committedSince reports nil once every partition has committed after t.
func (w *progress) committedSince(t time.Time) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.last) == 0 {
		return fmt.Errorf("no commit seen yet")
	}
	for k, l := range w.last {
		if !l.After(t) {
			return fmt.Errorf("%s last committed at %s, not after %s", k, l.Format(time.StampMilli), t.Format(time.StampMilli))
		}
	}
	return nil
}

// gaps returns the longest interval between commits of each partition seen
// since the last call, and starts over.
func (w *progress) gaps() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var ks []string
	for k := range w.gap {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	var b strings.Builder
	for _, k := range ks {
		fmt.Fprintf(&b, " %s %v", k, w.gap[k].Round(10*time.Millisecond))
	}
	clear(w.gap)
	return strings.TrimSpace(b.String())
}
