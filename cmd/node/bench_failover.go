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
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/examples/apps"
	"github.com/eddyrt/eddy/internal/pgproc"
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
//
// With --state-store postgres the bank keeps its state in PostgreSQL (a
// throwaway server, or --pg-dsn) and the kills run once, without replicas:
// the successor claims the partition and reads on from the stored offset.
// The commits are then seen in the runtime table (pgCommitLog).
func (c *cli) benchFailover(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("node bench failover", flag.ContinueOnError)
	kills := fs.Int("kills", 20, "SIGKILLs with hot replicas")
	coldKills := fs.Int("cold-kills", 5, "SIGKILLs without hot replicas (restore from the changelog)")
	partitions := fs.Int("partitions", 6, "`partitions` of the bank")
	keys := fs.Int("keys", 100_000, "state `keys` (accounts) per partition")
	rate := fs.Float64("rate", 300, "transfers per `second` during the kills")
	dir := fs.String("dir", "", "`directory` for data and logs (default: a temporary one, removed at the end)")
	stateStore := fs.String("state-store", string(eddy.LocalStore), "where the bank keeps its state: local (pebble and a changelog, with and without hot replicas) or postgres (no replicas)")
	var dsn string
	fs.Var(dsnFlag{&dsn}, "pg-dsn", "with --state-store postgres: the PostgreSQL `connection string` to run on instead of a throwaway server: a database without "+
		"eddy_state_"+apps.BankType+" and "+apps.BankType+" rows in eddy_runtime, which the bench makes and removes")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if *kills < 1 || *coldKills < 1 || *partitions < 3 || *keys < 1 || *rate <= 0 {
		return errors.New("want --kills, --cold-kills, --keys >= 1, --partitions >= 3, --rate > 0")
	}
	switch eddy.StateStore(*stateStore) {
	case eddy.LocalStore, eddy.PostgresStore:
	default:
		return fmt.Errorf("--state-store %q: local or postgres", *stateStore)
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
	if eddy.StateStore(*stateStore) == eddy.PostgresStore {
		fb := &failoverBench{out: out, partitions: *partitions, keys: *keys, rate: *rate, pgDSN: dsn}
		return fb.runPostgres(ctx, *dir, exe, *kills)
	}
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
	// pgDSN, when set, is the PostgreSQL the bank keeps its state in
	// (--state-store postgres); commits are then read from its runtime table.
	pgDSN string

	pc  *procCluster
	mon commitMonitor
}

// commitMonitor follows the commits of the bank's partitions: where the
// NATS server stamped them on the changelogs (commitLog), or where
// PostgreSQL did in its runtime table (pgCommitLog).
type commitMonitor interface {
	// gap is the time from the last commit at epoch to the first commit
	// at a newer epoch that processed input, and fence the part of it
	// until the newer owner took the partition.
	gap(ctx context.Context, p int, epoch uint64) (gap, fence time.Duration, err error)
	stop()
}

func (fb *failoverBench) run(ctx context.Context, dir, exe string, replicas, kills int) (failover, handover []time.Duration, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, err
	}
	cfg := procConfig{Dir: dir, Exe: exe, Partitions: fb.partitions, Replicas: replicas}
	if fb.pgDSN != "" {
		cfg.ExtraArgs = []string{"--state-store", string(eddy.PostgresStore), "--pg-dsn", fb.pgDSN}
	}
	pc, err := newProcCluster(cfg)
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
	if fb.pgDSN != "" {
		fb.mon, err = startPGCommitLog(ctx, fb.pgDSN, apps.BankType, fb.partitions)
	} else {
		fb.mon, err = startCommitLog(ctx, pc.nc, apps.BankType, fb.partitions)
	}
	if err != nil {
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

// failoverDB is the database the failover bench makes on its throwaway
// PostgreSQL server.
const failoverDB = "eddy_failover"

// runPostgres runs the kills with the bank's state in PostgreSQL and
// prints the gaps.
func (fb *failoverBench) runPostgres(ctx context.Context, dir, exe string, kills int) error {
	where := "--pg-dsn"
	if fb.pgDSN == "" {
		srv, err := pgproc.Start(pgproc.Config{Durable: true})
		if err != nil {
			return err
		}
		defer func() {
			if err := srv.Close(); err != nil {
				fb.out("  stop postgres: %v", err)
			}
		}()
		if err := srv.CreateDatabase(ctx, failoverDB); err != nil {
			return err
		}
		fb.pgDSN, where = srv.DSN(failoverDB), "a throwaway server with fsync on"
	} else {
		conn, err := pgx.Connect(ctx, fb.pgDSN)
		if err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
		defer conn.Close(context.WithoutCancel(ctx))
		if err := checkNoTypeState(ctx, conn, apps.BankType); err != nil {
			return fmt.Errorf("--pg-dsn: %w", err)
		}
		defer func() {
			if err := dropTypeState(context.WithoutCancel(ctx), conn, apps.BankType); err != nil {
				fb.out("  remove the bank's state from --pg-dsn: %v", err)
			}
		}()
	}
	fb.out("bench failover: 3 node processes, %d partitions x %d keys, %v transfers/s, state in PostgreSQL (%s), no replicas; commits read from eddy_runtime every %v",
		fb.partitions, fb.keys, fb.rate, where, pgPollInterval)
	failover, handover, err := fb.run(ctx, filepath.Join(dir, "postgres"), exe, 0, kills)
	if err != nil {
		return err
	}
	if l, ok := fb.mon.(*pgCommitLog); ok {
		fb.out("  runtime table read %d times, every %.1f ms on average; %d commits seen with an epoch newer than the poll before (a claim and a commit between two polls: taken as the newer owner's)",
			l.polls.Load(), l.interval().Seconds()*1000, l.ambiguous.Load())
	}
	ms := func(d time.Duration) int64 { return d.Milliseconds() }
	fb.out("bench: failover on postgres: %d partition failovers: p50 %v p99 %v max %v",
		len(failover), percentile(failover, 50), percentile(failover, 99), slices.Max(failover))
	if len(handover) > 0 {
		fb.out("bench: handover pause of planned moves on postgres: %d moves: p50 %v p99 %v max %v",
			len(handover), percentile(handover, 50), percentile(handover, 99), slices.Max(handover))
	}
	fb.out("bench: failover postgres p50=%d p99=%d max=%d handover_p50=%d",
		ms(percentile(failover, 50)), ms(percentile(failover, 99)), ms(slices.Max(failover)), ms(percentile(handover, 50)))
	return nil
}

// pgPollInterval is how often pgCommitLog reads the runtime table: a
// failover's gap is hundreds of ms and a read takes well under one, so a
// gap is known to a few ms.
const pgPollInterval = 2 * time.Millisecond

// pgCommitLog follows the commits of an actor type on PostgreSQL by reading
// its runtime rows every pgPollInterval: a row whose committed_at moved is
// a commit (committed_at is stamped by the server when the commit's
// transaction began), a row whose epoch rose is a claim. A claim raises
// the epoch without touching committed_at; a commit sets both. When a
// claim and a commit fall between two reads, the commit is taken as the
// newer owner's (a failover's successor commits after its claim; the old
// owner's last commit was seen long before), and counted as ambiguous.
type pgCommitLog struct {
	conn  *pgx.Conn
	parts []pgPartitionCommits

	polls, ambiguous atomic.Int64
	first, last      atomic.Int64 // unix nanoseconds of the first and the latest read
	lastErr          atomic.Pointer[error]

	cancel context.CancelFunc
	done   chan struct{}
}

// pgPartitionCommits are one partition's commits and claims as read,
// appended by the poller and read by gap.
type pgPartitionCommits struct {
	mu      sync.Mutex
	commits []commitRecord // at: committed_at
	claims  []commitRecord // at: the server's clock at the first read that showed the epoch

	// The row at the last read, the poller's alone.
	seen  bool
	epoch uint64
	at    time.Time
}

// startPGCommitLog reads the runtime rows of typ once, taking each as its
// partition's last commit, and then polls until stop.
func startPGCommitLog(ctx context.Context, dsn, typ string, partitions int) (*pgCommitLog, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	l := &pgCommitLog{conn: conn, parts: make([]pgPartitionCommits, partitions), done: make(chan struct{})}
	if err := l.read(ctx, typ); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("read eddy_runtime: %w", err)
	}
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l.cancel = cancel
	go func() {
		defer close(l.done)
		tick := time.NewTicker(pgPollInterval)
		defer tick.Stop()
		for {
			select {
			case <-pctx.Done():
				return
			case <-tick.C:
			}
			if err := l.read(pctx, typ); err != nil && pctx.Err() == nil {
				l.lastErr.Store(&err)
			}
		}
	}()
	return l, nil
}

// read reads the runtime rows once and records what changed.
func (l *pgCommitLog) read(ctx context.Context, typ string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rows, err := l.conn.Query(ctx, `SELECT partition, epoch, "offset", committed_at, now() FROM eddy_runtime WHERE type = $1`, typ)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var p int
		var epoch, offset int64
		var committed *time.Time
		var now time.Time
		if err := rows.Scan(&p, &epoch, &offset, &committed, &now); err != nil {
			return err
		}
		if p < 0 || p >= len(l.parts) {
			continue
		}
		pc := &l.parts[p]
		rec := commitRecord{epoch: uint64(epoch), offset: uint64(offset)}
		pc.mu.Lock()
		if pc.seen && rec.epoch != pc.epoch {
			claim := rec
			claim.at = now
			pc.claims = append(pc.claims, claim)
		}
		if committed != nil && !committed.Equal(pc.at) {
			if pc.seen && rec.epoch != pc.epoch {
				l.ambiguous.Add(1)
			}
			rec.at = *committed
			pc.commits = append(pc.commits, rec)
			pc.at = *committed
		}
		pc.seen, pc.epoch = true, rec.epoch
		pc.mu.Unlock()
		l.last.Store(now.UnixNano())
		l.first.CompareAndSwap(0, now.UnixNano())
	}
	if err := rows.Err(); err != nil {
		return err
	}
	l.polls.Add(1)
	return nil
}

// interval is the average time between two reads.
func (l *pgCommitLog) interval() time.Duration {
	n := l.polls.Load()
	if n < 2 {
		return 0
	}
	return time.Duration((l.last.Load() - l.first.Load()) / (n - 1))
}

// gap is the time from the last commit at epoch to the first commit at a
// newer epoch (which processed input: every commit moves the offset),
// waiting up to 30 s for that commit; fence is the part of it until the
// newer owner's claim was seen.
func (l *pgCommitLog) gap(ctx context.Context, p int, epoch uint64) (gap, fence time.Duration, err error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		pc := &l.parts[p]
		pc.mu.Lock()
		var last, first, claim *commitRecord
		for i := range pc.commits {
			c := &pc.commits[i]
			switch {
			case c.epoch == epoch:
				last = c
			case c.epoch > epoch && last != nil && first == nil && c.offset > last.offset:
				first = c
			}
		}
		for i := range pc.claims {
			if c := &pc.claims[i]; c.epoch > epoch && claim == nil {
				claim = c
			}
		}
		pc.mu.Unlock()
		if last != nil && first != nil {
			fenced := first.at
			if claim != nil && claim.at.Before(fenced) {
				fenced = claim.at
			}
			return first.at.Sub(last.at), fenced.Sub(last.at), nil
		}
		if time.Now().After(deadline) {
			err := fmt.Errorf("partition %d: no commit at epoch %d followed by one at a newer epoch in eddy_runtime (last seen at %d: %v)", p, epoch, epoch, last != nil)
			if e := l.lastErr.Load(); e != nil {
				err = fmt.Errorf("%w; the last read failed: %w", err, *e)
			}
			return 0, 0, err
		}
		select {
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop ends the polling and closes the connection.
func (l *pgCommitLog) stop() {
	l.cancel()
	<-l.done
	l.conn.Close(context.Background())
}
