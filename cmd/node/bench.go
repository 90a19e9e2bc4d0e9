package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/internal/natsproc"
	"github.com/eddyrt/eddy/partition"
)

// The streams of the bench: the input stream of the throughput runs (also the
// actor type eddy runs over it), the actor type whose changelog is restored,
// and the actor type whose changelog names the raw pipeline's streams.
const (
	benchType   = "bench"
	restoreType = "restore"
	rawType     = "raw"
)

// benchOptions are the sizes and knobs of one bench.
type benchOptions struct {
	events, partitions, keys, restoreRecords, runs int
	eventSize                                      int
	inFlight                                       int
	dir, cpuProfile                                string
	keyedSubjects                                  bool
	// natsServers > 0 runs NATS as that many nats-server processes (a
	// JetStream cluster from 3), as deployed, rather than embedded in the
	// bench's process (whose garbage collector then pauses NATS too).
	natsServers  int
	phaseTimeout time.Duration
}

// bench is one run of `node bench`: an embedded NATS server reached over TCP
// loopback, the pre-loaded input, and the results.
type bench struct {
	out  *cli
	cfg  eddy.Config // tuning from the flags
	log  *slog.Logger
	opts benchOptions
	dir  string

	srv  *server.Server    // the embedded NATS server, or
	proc *natsproc.Cluster // the nats-server process (--nats-process)
	url  string            // where NATS listens
	nc   *nats.Conn
	js   jetstream.JetStream

	counts  []int    // input events per partition
	lastSeq []uint64 // last input sequence per partition

	replayTook atomic.Int64 // nanoseconds the partition's own replay took, from its log
	// From the partition's log: the last snapshot upload (its duration in
	// nanoseconds and the bytes it stored), and whether a restore came from a
	// snapshot.
	uploadTook, uploadBytes atomic.Int64
	fromSnapshot            atomic.Bool
}

// bench measures, on this machine and in one run, eddy against the raw
// JetStream limit: (a) a pipeline that reads the input with one ordered
// consumer per partition and writes one changelog-sized record per event,
// against (b) eddy counting events per key over the same input; then (c) a raw
// read of a changelog against eddy restoring a partition from it.
func (c *cli) bench(ctx context.Context, args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "failover":
			return c.benchFailover(ctx, args[1:])
		case "memory":
			return c.benchMemory(ctx, args[1:])
		case "input":
			return c.benchInput(ctx, args[1:])
		case "latency":
			return c.benchLatency(ctx, args[1:])
		case "table":
			return c.benchTable(ctx, args[1:])
		case "postgres":
			return c.benchPostgres(ctx, args[1:])
		}
	}
	fs := flag.NewFlagSet("node bench", flag.ContinueOnError)
	cfg := eddy.DefaultConfig()
	addTuningFlags(fs, &cfg)
	lf := addLogFlags(fs, slog.LevelWarn)
	var o benchOptions
	fs.IntVar(&o.events, "events", 1_000_000, "input `events` for the throughput runs")
	fs.IntVar(&o.partitions, "partitions", 16, "`partitions` of the input stream")
	fs.IntVar(&o.keys, "keys", 10_000, "distinct `keys` of the input events (uniformly random)")
	fs.IntVar(&o.eventSize, "event-size", 32, "`bytes` of each input event")
	fs.IntVar(&o.restoreRecords, "restore-records", 500_000, "`records` (distinct keys) in the changelog that is restored")
	fs.IntVar(&o.runs, "runs", 1, "measure each side this many `times` and report medians")
	fs.BoolVar(&o.keyedSubjects, "keyed-subjects", false, "give the input stream one subject per key (ActorType.KeyedSubjects), as eddy did before 0.12")
	fs.IntVar(&o.inFlight, "in-flight", 4096, "most async publishes in flight in the raw pipeline")
	fs.StringVar(&o.dir, "dir", "", "`directory` for NATS and store data (default: a temporary one, removed afterwards)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of each measured phase to `file`.<phase>")
	fs.DurationVar(&o.phaseTimeout, "phase-timeout", 10*time.Minute, "give up on a phase after this long")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	switch {
	case o.events < 1 || o.partitions < 1 || o.keys < 1 || o.restoreRecords < 1 || o.runs < 1 || o.inFlight < 1:
		return errors.New("--events, --partitions, --keys, --restore-records, --runs and --in-flight must be positive")
	case o.eventSize < 0 || o.eventSize > cfg.MaxEventSize:
		return fmt.Errorf("--event-size %d: 0..%d", o.eventSize, cfg.MaxEventSize)
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	log, err := lf.logger(c.stderr)
	if err != nil {
		return err
	}
	b := &bench{out: c, cfg: cfg, opts: o}
	b.log = slog.New(captureHandler{Handler: log.Handler(), onRecord: b.observe})
	return b.run(ctx)
}

func (b *bench) printf(format string, a ...any) { fmt.Fprintf(b.out.stdout, format+"\n", a...) }

func (b *bench) run(ctx context.Context) (err error) {
	o := b.opts
	b.dir = o.dir
	cleanup, err := benchDir(&b.dir, "eddy-bench-")
	if err != nil {
		return err
	}
	defer cleanup()
	if err := b.startNATS(); err != nil {
		return err
	}
	defer b.stopNATS()
	b.printf("node bench: %d events, %d partitions, %d keys, %d B events, restore %d records, %d run(s), GOMAXPROCS %d, NATS %s over TCP loopback",
		o.events, o.partitions, o.keys, o.eventSize, o.restoreRecords, o.runs, runtime.GOMAXPROCS(0), server.VERSION)

	if err := b.preload(ctx); err != nil {
		return fmt.Errorf("preload: %w", err)
	}
	var raw, ed []time.Duration
	var records float64 // changelog records eddy wrote in its last run
	for run := range o.runs {
		d, err := b.phase(ctx, "raw", func(ctx context.Context) (time.Duration, error) { return b.rawPipeline(ctx) })
		if err != nil {
			return fmt.Errorf("raw pipeline: %w", err)
		}
		raw = append(raw, d)
		b.printf("  (a) raw pipeline, run %d: %d events in %v = %.0f ev/s", run+1, o.events, d.Round(time.Millisecond), rate(o.events, d))
		var st eddyStats
		d, err = b.phase(ctx, "eddy", func(ctx context.Context) (d time.Duration, err error) {
			d, st, err = b.eddyThroughput(ctx, run)
			return d, err
		})
		if err != nil {
			return fmt.Errorf("eddy: %w", err)
		}
		ed, records = append(ed, d), st.records
		b.printf("  (b) eddy, run %d: %d events in %v = %.0f ev/s (%.0f commits of %.0f events, %.0f changelog records, %.1f ms each on average)",
			run+1, o.events, d.Round(time.Millisecond), rate(o.events, d), st.commits, float64(o.events)/max(st.commits, 1),
			st.records/max(st.commits, 1), 1000*st.commitSeconds/max(st.commits, 1))
	}
	rawRate, eddyRate := rate(o.events, median(raw)), rate(o.events, median(ed))
	lim, err := b.limitPipeline(ctx, int(records))
	if err != nil {
		return fmt.Errorf("limit pipeline: %w", err)
	}
	b.printf("  (a') limit: one unfiltered ordered consumer reads the input at %.0f ev/s; async publish of %d changelog records at %.0f rec/s; "+
		"eddy wrote %.2f records per event: limit 1/(1/read + %.2f/publish) = %.0f ev/s",
		lim.read, int(records), lim.publish, lim.perEvent, lim.perEvent, lim.rate())
	b.printf("bench: limit ratio=%.2f eddy=%d limit=%d", eddyRate/lim.rate(), int64(eddyRate), int64(lim.rate()))
	b.printf("bench: throughput ratio=%.2f eddy=%d raw=%d", eddyRate/rawRate, int64(eddyRate), int64(rawRate))

	s, err := b.buildChangelog(ctx)
	if err != nil {
		return fmt.Errorf("build changelog: %w", err)
	}
	var rawR, edR []float64
	var edD []time.Duration
	for run := range o.runs {
		var n uint64
		d, err := b.phase(ctx, "restore-raw", func(ctx context.Context) (d time.Duration, err error) {
			n, d, err = b.rawRead(ctx, s)
			return d, err
		})
		if err != nil {
			return fmt.Errorf("raw changelog read: %w", err)
		}
		rawR = append(rawR, rate(int(n), d))
		b.printf("  (c.i) raw read, run %d: %d records in %v = %.0f rec/s", run+1, n, d.Round(time.Millisecond), rate(int(n), d))
		d, err = b.phase(ctx, "restore-eddy", func(ctx context.Context) (time.Duration, error) { return b.eddyRestore(ctx, run) })
		if err != nil {
			return fmt.Errorf("eddy restore: %w", err)
		}
		edR, edD = append(edR, rate(int(n), d)), append(edD, d)
		b.printf("  (c.ii) eddy restore, run %d: %d records in %v = %.0f rec/s (the changelog replay itself: %v)",
			run+1, n, d.Round(time.Millisecond), rate(int(n), d), time.Duration(b.replayTook.Load()).Round(time.Millisecond))
	}
	rawRestore, eddyRestore := medianF(rawR), medianF(edR)
	b.printf("bench: restore ratio=%.2f eddy=%d raw=%d", eddyRestore/rawRestore, int64(eddyRestore), int64(rawRestore))
	return b.snapshotRestore(ctx, median(edD))
}

// phase runs one measured phase under the phase timeout and, with
// --cpuprofile, a CPU profile of its own.
func (b *bench) phase(ctx context.Context, name string, f func(context.Context) (time.Duration, error)) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, b.opts.phaseTimeout)
	defer cancel()
	if b.opts.cpuProfile == "" {
		return f(ctx)
	}
	file, err := os.Create(b.opts.cpuProfile + "." + name)
	if err != nil {
		return 0, err
	}
	defer file.Close()
	if err := pprof.StartCPUProfile(file); err != nil {
		return 0, err
	}
	d, err := f(ctx)
	pprof.StopCPUProfile()
	return d, err
}

func (b *bench) startNATS() error {
	if b.opts.natsServers > 0 {
		return b.startNATSProcess()
	}
	srv, err := server.NewServer(&server.Options{
		ServerName: "eddy-bench",
		Host:       "127.0.0.1",
		Port:       -1,
		JetStream:  true,
		StoreDir:   filepath.Join(b.dir, "nats"),
		NoLog:      true,
		NoSigs:     true,
	})
	if err != nil {
		return err
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return errors.New("embedded NATS server did not start")
	}
	b.srv, b.url = srv, srv.ClientURL()
	// TCP loopback, not nats.InProcessServer: ordered consumers read ~770 k msg/s over
	// TCP loopback and ~550 k in-process on a 2-core machine.
	return b.connect()
}

// startNATSProcess starts the nats-server processes, built from the module
// go.mod pins (natsproc), with JetStream under the bench's directory.
func (b *bench) startNATSProcess() error {
	c, err := natsproc.New(natsproc.Config{Servers: b.opts.natsServers, Dir: filepath.Join(b.dir, "nats")})
	if err != nil {
		return err
	}
	b.proc = c
	if err := c.StartAll(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), natsReadyTimeout)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		return err
	}
	b.url = c.ConnectURL()
	return b.connect()
}

func (b *bench) connect() (err error) {
	if b.nc, err = nats.Connect(b.url, nats.Name("eddy bench")); err != nil {
		return err
	}
	b.js, err = jetstream.New(b.nc)
	return err
}

func (b *bench) stopNATS() {
	if b.nc != nil {
		b.nc.Close()
	}
	if b.proc != nil {
		if err := b.proc.Close(); err != nil {
			b.printf("  stop nats-server: %v", err)
		}
		return
	}
	b.srv.Shutdown()
	b.srv.WaitForShutdown()
}

// input addresses the bench's input stream.
func (b *bench) input() partition.Input {
	return partition.Input{Type: benchType, Partitions: b.opts.partitions, KeyedSubjects: b.opts.keyedSubjects}
}

// preload publishes the input events (keys uniformly random, fixed seed) and
// records each partition's event count and last sequence. It is not timed.
func (b *bench) preload(ctx context.Context) error {
	o := b.opts
	err := partition.EnsureInputStream(ctx, b.js, b.input(),
		partition.StreamOptions{Replicas: 1, Duplicates: b.cfg.DuplicateWindow})
	if err != nil {
		return err
	}
	keys := make([]string, o.keys)
	part := make([]int, o.keys)
	for k := range keys {
		keys[k] = "k" + strconv.Itoa(k)
		part[k] = partition.Of(keys[k], o.partitions)
	}
	var failed atomic.Int64
	js, err := jetstream.New(b.nc, jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { failed.Add(1) }))
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(1, 2))
	payload := make([]byte, o.eventSize)
	b.counts = make([]int, o.partitions)
	start := time.Now()
	for range o.events {
		k := rng.IntN(o.keys)
		b.counts[part[k]]++
		if _, err := js.PublishMsgAsync(b.input().Msg(keys[k], payload), jetstream.WithStallWait(time.Minute)); err != nil {
			return err
		}
	}
	if err := waitAsync(ctx, js); err != nil {
		return err
	}
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d events not stored", n)
	}
	took := time.Since(start)
	st, err := b.js.Stream(ctx, benchType)
	if err != nil {
		return err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return err
	}
	if info.State.Msgs != uint64(o.events) {
		return fmt.Errorf("input stream holds %d events, want %d", info.State.Msgs, o.events)
	}
	b.lastSeq = make([]uint64, o.partitions)
	for p, n := range b.counts {
		if n == 0 {
			continue
		}
		m, err := st.GetLastMsgForSubject(ctx, b.input().Filter(p))
		if err != nil {
			return fmt.Errorf("last event of partition %d: %w", p, err)
		}
		b.lastSeq[p] = m.Sequence
	}
	b.printf("  preload (not timed): %d events in %v (%.0f ev/s); partitions hold %d..%d events",
		o.events, took.Round(time.Millisecond), rate(o.events, took), slices.Min(b.counts), slices.Max(b.counts))
	return nil
}

func waitAsync(ctx context.Context, js jetstream.JetStream) error {
	select {
	case <-js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for %d publish acks: %w", js.PublishAsyncPending(), ctx.Err())
	}
}

// rawPipeline is the physical limit of eddy's data path on this machine: per
// partition, an ordered consumer reads the input and every event becomes one
// record on a changelog stream of eddy's layout (MaxMsgsPerSubject=1, same
// subjects), published asynchronously with a bounded number in flight. No
// state, no atomic batches, no fencing. Like an eddy node, it uses one NATS
// connection; the streams are created inside the timed part, as eddy's are.
func (b *bench) rawPipeline(ctx context.Context) (time.Duration, error) {
	o := b.opts
	var failed atomic.Int64
	js, err := jetstream.New(b.nc, jetstream.WithPublishAsyncMaxPending(o.inFlight),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { failed.Add(1) }))
	if err != nil {
		return 0, err
	}
	start := time.Now()
	errs := make([]error, o.partitions)
	var wg sync.WaitGroup
	for p := range o.partitions {
		wg.Go(func() { errs[p] = b.rawPartition(ctx, js, p) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	if err := waitAsync(ctx, js); err != nil {
		return 0, err
	}
	took := time.Since(start)
	if n := failed.Load(); n > 0 {
		return 0, fmt.Errorf("%d changelog records not stored", n)
	}
	for p := range o.partitions {
		if err := b.js.DeleteStream(ctx, changelog.NewSubjects(rawType, p).Stream()); err != nil {
			return 0, err
		}
	}
	return took, nil
}

func (b *bench) rawPartition(ctx context.Context, js jetstream.JetStream, p int) error {
	s := changelog.NewSubjects(rawType, p)
	if _, err := changelog.EnsureStream(ctx, js, s, changelog.DefaultStreamConfig()); err != nil {
		return err
	}
	if b.counts[p] == 0 {
		return nil
	}
	st, err := js.Stream(ctx, benchType)
	if err != nil {
		return err
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{b.input().Filter(p)},
	})
	if err != nil {
		return err
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(2 * b.cfg.BatchSize)) // as eddy's input reader
	if err != nil {
		return err
	}
	defer it.Stop()
	for i := range b.counts[p] {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return err
		}
		key, err := b.input().Key(p, msg.Subject(), msg.Headers())
		if err != nil {
			return err
		}
		value, err := msgpack.Marshal(int64(i)) // a count, as eddy's handler stores
		if err != nil {
			return err
		}
		m, err := s.PartMsg(changelog.Record{Kind: changelog.KindSet, Store: partition.DefaultStore, Key: []byte(key), Value: value})
		if err != nil {
			return err
		}
		if _, err := js.PublishMsgAsync(m, jetstream.WithStallWait(time.Minute)); err != nil {
			return err
		}
	}
	return nil
}

// countEvent is the bench's actor type: it counts the events of each key.
func countEvent(c *eddy.Context) error {
	var n int64
	if _, err := c.Get(&n); err != nil {
		return err
	}
	return c.Set(n + 1)
}

type eddyStats struct{ commits, records, commitSeconds float64 }

// node starts an eddy node on the bench's NATS server with one actor type
// (and the bench's tuning, changed by mutate when not nil).
func (b *bench) node(ctx context.Context, dir string, t eddy.ActorType, mutate ...func(*eddy.Config)) (*eddy.Node, *prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	cfg := b.cfg
	cfg.NodeID, cfg.DataDir, cfg.NATSURL, cfg.HTTPAddr = "bench", dir, b.url, ""
	cfg.Logger, cfg.Registerer = b.log, reg
	for _, m := range mutate {
		m(&cfg)
	}
	node, err := eddy.NewNode(cfg)
	if err != nil {
		return nil, nil, err
	}
	if err := node.Register(t); err != nil {
		return nil, nil, err
	}
	return node, reg, node.Start(ctx)
}

func stopNode(node *eddy.Node) error {
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	return node.Stop(ctx)
}

// eddyThroughput runs eddy over the input on a fresh data dir and fresh
// changelogs, from Start until every partition's committed offset is its last
// input sequence.
func (b *bench) eddyThroughput(ctx context.Context, run int) (time.Duration, eddyStats, error) {
	dir := filepath.Join(b.dir, "eddy-"+strconv.Itoa(run))
	defer os.RemoveAll(dir)
	start := time.Now()
	node, reg, err := b.node(ctx, dir, eddy.ActorType{Name: benchType, Partitions: b.opts.partitions, KeyedSubjects: b.opts.keyedSubjects, Handler: countEvent})
	if err != nil {
		return 0, eddyStats{}, err
	}
	err = b.waitCaughtUp(ctx, node, reg)
	took := time.Since(start)
	err = errors.Join(err, stopNode(node))
	st := eddyStats{commits: sumCounter(reg, "eddy_partition_commits_total"), records: sumCounter(reg, "eddy_partition_changelog_records_total"),
		commitSeconds: sumCounter(reg, "eddy_partition_commit_seconds")}
	for p := range b.opts.partitions {
		err = errors.Join(err, b.js.DeleteStream(ctx, changelog.NewSubjects(benchType, p).Stream()))
	}
	return took, st, err
}

// waitCaughtUp waits until every partition has committed its last event. It
// polls the partitions' committed-offset gauge (set after each commit's local
// store batch), which answers at once, and then confirms with Node.Status: a
// Status request queues behind the input batches in a partition's mailbox, so
// polling Status alone would add up to a commit per partition to the time.
func (b *bench) waitCaughtUp(ctx context.Context, node *eddy.Node, reg prometheus.Gatherer) error {
	for {
		offsets := gaugeByPartition(reg, "eddy_partition_offset")
		done := len(offsets) == b.opts.partitions
		for p, off := range offsets {
			done = done && uint64(off) >= b.lastSeq[p]
		}
		if done {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("partitions did not catch up: %w (committed offsets %v, want %v)", ctx.Err(), offsets, b.lastSeq)
		case <-time.After(5 * time.Millisecond):
		}
	}
	st, err := node.Status()
	if err != nil {
		return err
	}
	for _, s := range st {
		if s.Offset < b.lastSeq[s.Partition] {
			return fmt.Errorf("partition %d: status offset %d, its gauge said %d was committed", s.Partition, s.Offset, b.lastSeq[s.Partition])
		}
	}
	return nil
}

func gaugeByPartition(g prometheus.Gatherer, name string) map[int]float64 {
	mfs, err := g.Gather()
	if err != nil {
		return nil
	}
	out := map[int]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "partition" {
					if p, err := strconv.Atoi(l.GetValue()); err == nil {
						out[p] = m.GetGauge().GetValue()
					}
				}
			}
		}
	}
	return out
}

func sumCounter(g prometheus.Gatherer, name string) float64 {
	mfs, err := g.Gather()
	if err != nil {
		return 0
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue() + m.GetHistogram().GetSampleSum()
			}
		}
	}
	return sum
}

// buildChangelog writes a real eddy changelog with changelog.Writer: restore
// records distinct keys in fenced atomic batches, each closed by a meta record.
func (b *bench) buildChangelog(ctx context.Context) (changelog.Subjects, error) {
	s := changelog.NewSubjects(restoreType, 0)
	if _, err := changelog.EnsureStream(ctx, b.js, s, changelog.DefaultStreamConfig()); err != nil {
		return s, err
	}
	w := changelog.NewWriter(b.nc, s, changelog.Tail{}, changelog.MaxBatch, changelog.MaxMessage(b.nc.MaxPayload()))
	defer w.Close()
	value, err := msgpack.Marshal(int64(1))
	if err != nil {
		return s, err
	}
	recs := make([]changelog.Record, 0, b.cfg.MaxBatchRecords)
	start := time.Now()
	n := b.opts.restoreRecords
	for i := 0; i < n; {
		recs = recs[:0]
		for ; i < n && len(recs) < b.cfg.MaxBatchRecords-1; i++ {
			recs = append(recs, changelog.Record{Kind: changelog.KindSet, Store: partition.DefaultStore,
				Key: []byte("r" + strconv.Itoa(i)), Value: value})
		}
		recs = append(recs, changelog.Record{Kind: changelog.KindMeta, Meta: changelog.Meta{Epoch: 1}})
		if _, err := w.Commit(ctx, recs); err != nil {
			return s, err
		}
	}
	took := time.Since(start)
	b.printf("  changelog (not timed): %d records written in %v (%.0f rec/s, fenced atomic batches of %d)",
		n, took.Round(time.Millisecond), rate(n, took), b.cfg.MaxBatchRecords)
	return s, nil
}

// rawRead reads the whole changelog with an ordered consumer (the buffer of
// changelog.Replay's default) and counts the records up to its last
// sequence, decoding each message: the least a restore must do.
func (b *bench) rawRead(ctx context.Context, s changelog.Subjects) (uint64, time.Duration, error) {
	var n uint64
	took, err := b.readStream(ctx, s.Stream(), 4096, func(msg jetstream.Msg) error {
		return s.Records(msg.Subject(), msg.Data(), func(changelog.Record) error { n++; return nil })
	})
	return n, took, err
}

// readStream reads the whole stream name with an ordered consumer that
// keeps buffer messages in flight, calling each for every message, and
// returns how long it took.
func (b *bench) readStream(ctx context.Context, name string, buffer int, each func(jetstream.Msg) error) (time.Duration, error) {
	start := time.Now()
	st, err := b.js.Stream(ctx, name)
	if err != nil {
		return 0, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, err
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return 0, err
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(buffer))
	if err != nil {
		return 0, err
	}
	defer it.Stop()
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return 0, err
		}
		md, err := msg.Metadata()
		if err != nil {
			return 0, err
		}
		if err := each(msg); err != nil {
			return 0, err
		}
		if md.Sequence.Stream >= info.State.LastSeq {
			return time.Since(start), nil
		}
	}
}

// eddyRestore starts a node with an empty data dir, so its partition restores
// from the whole changelog, and times it from Start until Status answers: the
// partition has restored, fenced and started reading its input.
func (b *bench) eddyRestore(ctx context.Context, run int) (time.Duration, error) {
	dir := filepath.Join(b.dir, "restore-"+strconv.Itoa(run))
	defer os.RemoveAll(dir)
	b.replayTook.Store(0)
	start := time.Now()
	node, _, err := b.node(ctx, dir, eddy.ActorType{Name: restoreType, Partitions: 1, Handler: countEvent})
	if err != nil {
		return 0, err
	}
	err = waitRunning(ctx, node)
	took := time.Since(start)
	return took, errors.Join(err, stopNode(node))
}

// observe picks the partition's own restore time, its snapshot uploads and
// snapshot restores out of its log.
func (b *bench) observe(r slog.Record) {
	switch r.Message {
	case "restored from changelog":
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "took" && a.Value.Kind() == slog.KindDuration {
				b.replayTook.Store(int64(a.Value.Duration()))
				return false
			}
			return true
		})
	case "snapshot uploaded":
		r.Attrs(func(a slog.Attr) bool {
			switch {
			case a.Key == "took" && a.Value.Kind() == slog.KindDuration:
				b.uploadTook.Store(int64(a.Value.Duration()))
			case a.Key == "uploaded_bytes" && a.Value.Kind() == slog.KindInt64:
				b.uploadBytes.Store(a.Value.Int64())
			}
			return true
		})
	case "restored from snapshot":
		b.fromSnapshot.Store(true)
	}
}

// captureHandler shows every record to onRecord and passes on those its
// handler logs.
type captureHandler struct {
	slog.Handler
	onRecord func(slog.Record)
}

func (h captureHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h captureHandler) Handle(ctx context.Context, r slog.Record) error {
	h.onRecord(r)
	if h.Handler.Enabled(ctx, r.Level) {
		return h.Handler.Handle(ctx, r)
	}
	return nil
}

func (h captureHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return captureHandler{h.Handler.WithAttrs(as), h.onRecord}
}

func (h captureHandler) WithGroup(name string) slog.Handler {
	return captureHandler{h.Handler.WithGroup(name), h.onRecord}
}

func rate(n int, d time.Duration) float64 { return float64(n) / max(d.Seconds(), 1e-9) }

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func medianF(fs []float64) float64 {
	s := slices.Clone(fs)
	slices.Sort(s)
	return s[len(s)/2]
}

// waitRunning waits until every partition of node has restored and runs.
func waitRunning(ctx context.Context, node *eddy.Node) error {
	for {
		st, err := node.Status()
		if err != nil {
			return err
		}
		if !slices.ContainsFunc(st, func(s eddy.PartitionStatus) bool { return !s.Running }) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("partitions did not start: %w", ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}
