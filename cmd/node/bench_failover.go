package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy/examples/apps"
	"github.com/eddyrt/eddy/partition"
)

// benchFailover measures failover and handover on a 3-node cluster of node
// processes under steady bank load. For each SIGKILL of a partition owner it
// takes, per partition the owner had, the gap between the owner's last
// changelog commit and the successor's first commit that processes input
// (both stamped by the NATS server). It does this with hot replicas (R=1)
// and, in the same run and with the same state size, without (R=0: the
// successor restores from the changelog). When the killed node restarts, the
// assignor moves partitions back to it by warm-up and handover; the gap of
// each such planned move is its pause.
func (c *cli) benchFailover(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("node bench failover", flag.ContinueOnError)
	kills := fs.Int("kills", 20, "SIGKILLs with hot replicas")
	coldKills := fs.Int("cold-kills", 5, "SIGKILLs without hot replicas (restore from the changelog)")
	partitions := fs.Int("partitions", 6, "`partitions` of the bank")
	keys := fs.Int("keys", 100_000, "state `keys` (accounts) per partition")
	rate := fs.Float64("rate", 300, "transfers per `second` during the kills")
	dir := fs.String("dir", "", "`directory` for data and logs (default: a temporary one, removed at the end)")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if *kills < 1 || *coldKills < 1 || *partitions < 3 || *keys < 1 || *rate <= 0 {
		return errors.New("want --kills, --cold-kills, --keys >= 1, --partitions >= 3, --rate > 0")
	}
	cleanup, err := workDir(dir, "eddy-bench-failover-")
	if err != nil {
		return err
	}
	defer cleanup()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	out := func(format string, a ...any) { fmt.Fprintf(c.stdout, format+"\n", a...) }
	run := func(name string, replicas, kills int) (failover, handover []time.Duration, err error) {
		fb := &failoverBench{out: out, partitions: *partitions, keys: *keys, rate: *rate}
		return fb.run(ctx, filepath.Join(*dir, name), exe, replicas, kills)
	}
	out("bench failover: 3 node processes, %d partitions x %d keys, %v transfers/s", *partitions, *keys, *rate)
	hot, handover, err := run("hot", 1, *kills)
	if err != nil {
		return err
	}
	cold, _, err := run("cold", 0, *coldKills)
	if err != nil {
		return err
	}
	ms := func(d time.Duration) int64 { return d.Milliseconds() }
	out("bench: failover with hot replicas: %d partition failovers: p50 %v p99 %v max %v",
		len(hot), percentile(hot, 50), percentile(hot, 99), slices.Max(hot))
	out("bench: failover without replicas (changelog restore of %d keys): %d: p50 %v p99 %v",
		*keys, len(cold), percentile(cold, 50), percentile(cold, 99))
	if len(handover) > 0 {
		out("bench: handover pause of planned moves: %d moves: p50 %v p99 %v max %v",
			len(handover), percentile(handover, 50), percentile(handover, 99), slices.Max(handover))
	}
	out("bench: failover p50=%d p99=%d cold_p50=%d handover_p50=%d",
		ms(percentile(hot, 50)), ms(percentile(hot, 99)), ms(percentile(cold, 50)), ms(percentile(handover, 50)))
	return nil
}

// failoverBench is one phase: a cluster, its load and the commit monitor.
type failoverBench struct {
	out        func(string, ...any)
	partitions int
	keys       int
	rate       float64

	pc  *procCluster
	mon *commitLog
}

func (fb *failoverBench) run(ctx context.Context, dir, exe string, replicas, kills int) (failover, handover []time.Duration, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, err
	}
	pc, err := newProcCluster(procConfig{Dir: dir, Exe: exe, Partitions: fb.partitions, Replicas: replicas})
	if pc != nil {
		defer pc.close()
	}
	if err != nil {
		return nil, nil, err
	}
	fb.pc = pc
	ids := []string{"n1", "n2", "n3"}
	for _, id := range ids {
		if err := pc.start(id, len(ids)); err != nil {
			return nil, nil, err
		}
	}
	if _, err := pc.waitSettled(ctx, ids, 90*time.Second); err != nil {
		return nil, nil, err
	}
	load := newBankLoad(pc, fb.partitions*fb.keys)
	start := time.Now()
	if err := fundAsync(ctx, pc, load); err != nil {
		return nil, nil, err
	}
	if err := fb.waitProcessed(ctx, ids, 10*time.Minute); err != nil {
		return nil, nil, err
	}
	fb.out("  R=%d: %d accounts funded and processed in %v", replicas, len(load.accounts), time.Since(start).Round(time.Second))
	if fb.mon, err = startCommitLog(ctx, pc.nc, apps.BankType, fb.partitions); err != nil {
		return nil, nil, err
	}
	defer fb.mon.stop()
	lctx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var loadErr error
	wg.Go(func() { loadErr = load.run(lctx, fb.rate, uint64(time.Now().UnixNano())) })
	defer func() { stopLoad(); wg.Wait() }()

	for k := range kills {
		st, err := pc.waitSettled(ctx, ids, 60*time.Second)
		if err != nil {
			return nil, nil, err
		}
		if err := pc.waitReplicasWarm(ctx, ids[0], 60*time.Second); err != nil {
			return nil, nil, err
		}
		time.Sleep(300 * time.Millisecond) // steady load before the kill
		victim := pickVictim(st, k)
		owned := ownedBy(st, victim)
		if err := pc.kill(victim); err != nil {
			return nil, nil, err
		}
		survivors := without(ids, victim)
		if _, err := pc.waitSettled(ctx, survivors, 60*time.Second); err != nil {
			return nil, nil, err
		}
		var gaps []time.Duration
		for _, p := range owned {
			gap, _, err := fb.mon.gap(ctx, p, st.Partitions[p].Epoch)
			if err != nil {
				return nil, nil, err
			}
			gaps = append(gaps, gap)
		}
		failover = append(failover, gaps...)
		fb.out("  R=%d kill %d: %s owned %v: gaps %v", replicas, k+1, victim, owned, roundMs(gaps))

		before, err := pc.settled(ctx, survivors)
		if err != nil {
			return nil, nil, err
		}
		if err := pc.start(victim, 0); err != nil {
			return nil, nil, err
		}
		after, err := pc.waitSettled(ctx, ids, 90*time.Second)
		if err != nil {
			return nil, nil, err
		}
		var moved []int
		var pauses, fences []time.Duration
		for _, p := range after.Partitions {
			b := before.Partitions[p.Partition]
			if b.Active == p.Active {
				continue
			}
			pause, fence, err := fb.mon.gap(ctx, p.Partition, b.Epoch)
			if err != nil {
				return nil, nil, err
			}
			moved = append(moved, p.Partition)
			pauses, fences = append(pauses, pause), append(fences, fence)
		}
		handover = append(handover, pauses...)
		if len(moved) > 0 {
			fb.out("  R=%d restart %d: %s took %v back: pauses %v (of which until the epoch record %v)",
				replicas, k+1, victim, moved, roundMs(pauses), roundMs(fences))
		}
	}
	stopLoad()
	wg.Wait()
	if loadErr != nil {
		return nil, nil, loadErr
	}
	return failover, handover, nil
}

// roundMs rounds durations to the millisecond, for printing.
func roundMs(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}

// without returns ids without id.
func without(ids []string, id string) []string {
	return slices.DeleteFunc(slices.Clone(ids), func(s string) bool { return s == id })
}

// fundAsync deposits into every account with asynchronous publishes.
func fundAsync(ctx context.Context, pc *procCluster, load *bankLoad) error {
	js, err := jetstream.New(pc.nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return err
	}
	const amount = 1000
	for _, a := range load.accounts {
		b, err := msgpack.Marshal(apps.Op{Kind: "deposit", Amount: amount})
		if err != nil {
			return err
		}
		m := partition.Input{Type: apps.BankType, Partitions: pc.Partitions}.Msg(a, b)
		m.Header.Set(jetstream.MsgIDHeader, "deposit-"+a)
		if _, err := js.PublishMsgAsync(m, jetstream.WithStallWait(time.Minute)); err != nil {
			return err
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return ctx.Err()
	}
	load.deposited = amount * int64(len(load.accounts))
	return nil
}

// waitProcessed waits until every partition's committed offset reaches the
// last event of its input partition.
func (fb *failoverBench) waitProcessed(ctx context.Context, ids []string, timeout time.Duration) error {
	js, err := jetstream.New(fb.pc.nc)
	if err != nil {
		return err
	}
	st, err := js.Stream(ctx, apps.BankType)
	if err != nil {
		return err
	}
	want := map[int]uint64{}
	for p := range fb.partitions {
		m, err := st.GetLastMsgForSubject(ctx, partition.Input{Type: apps.BankType, Partitions: fb.partitions}.Filter(p))
		if err != nil {
			return err
		}
		want[p] = m.Sequence
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		done := 0
		for _, id := range ids {
			ps, err := fb.pc.partitionStatus(ctx, id)
			if err != nil {
				continue
			}
			for _, p := range ps {
				if p.Running && p.Offset >= want[p.Partition] {
					done++
				}
			}
		}
		if done == fb.partitions {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("input not processed within %v", timeout)
}

// gap is the time from the last commit at epoch to the first commit at a
// newer epoch that processed input (its offset is past the last at epoch),
// waiting up to 30 s for that commit; fence is the part of it until the
// newer owner's epoch record (its first commit).
func (l *commitLog) gap(ctx context.Context, p int, epoch uint64) (gap, fence time.Duration, err error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		pc := &l.commits[p]
		pc.mu.Lock()
		var last, fenced, first *commitRecord
		for i := range pc.list {
			c := &pc.list[i]
			switch {
			case c.epoch == epoch:
				last = c
			case c.epoch > epoch && last != nil && fenced == nil:
				fenced = c
				if c.offset > last.offset {
					first = c
				}
			case c.epoch > epoch && last != nil && c.offset > last.offset && first == nil:
				first = c
			}
		}
		pc.mu.Unlock()
		if last != nil && first != nil {
			return first.at.Sub(last.at), fenced.at.Sub(last.at), nil
		}
		if time.Now().After(deadline) {
			return 0, 0, fmt.Errorf("partition %d: no commit at epoch %d followed by one at a newer epoch (last seen at %d: %v)", p, epoch, epoch, last != nil)
		}
		select {
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
