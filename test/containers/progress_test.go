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

// progress samples, every 250 ms, the partition actors of every node that
// is not cut off (/v1/status: each node's own, with no request to the
// others), and keeps each partition's last commit, the latest any node
// reports, and the longest interval between two of its successive commits
// it saw. A gap longer than the sampling period is seen as such; a shorter
// one shows as at most ~250 ms. A node that does not answer within a
// second is left out of that sample; the others still count.
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
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	latest := map[string]time.Time{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range w.c.nodes {
		if n.isolated() {
			continue // its actors may be zombies until they try to commit
		}
		wg.Go(func() {
			st, err := w.c.nodeStatus(ctx, n)
			if err != nil {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for _, p := range st {
				k := fmt.Sprintf("%s/%d", p.Type, p.Partition)
				if p.LastCommit.After(latest[k]) {
					latest[k] = p.LastCommit
				}
			}
		})
	}
	wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, last := range latest {
		if prev := w.last[k]; last.After(prev) {
			if !prev.IsZero() {
				w.gap[k] = max(w.gap[k], last.Sub(prev))
			}
			w.last[k] = last
		}
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
// since the last call, and the longest of them with its partition, and
// starts over.
func (w *progress) gaps() (each string, longest time.Duration, of string) {
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
		if w.gap[k] > longest {
			longest, of = w.gap[k], k
		}
	}
	clear(w.gap)
	return strings.TrimSpace(b.String()), longest, of
}
