package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/partition"
)

// The latency bench's actor type and the output stream it emits to.
const (
	latencyType   = "latency"
	latencyOutput = "latency_out"
)

// saturationID marks the ids of the events of the max-rate phase; the load
// phase's ids are 0..n-1.
const saturationID = 1 << 63

// latencyOptions are the sizes and knobs of `node bench latency`.
type latencyOptions struct {
	partitions, keys, eventSize, inFlight int
	rate, fraction                        float64
	duration, warmup, saturate, tick      time.Duration
	drainTimeout                          time.Duration
}

// benchLatency measures the end-to-end latency of eddy at a fraction of its
// maximum rate: from the publish ack of an input event to the output its
// handler emits seen by a consumer. A plain nats.go client publishes the
// input at a steady rate and a plain ordered consumer reads the outputs.
func (c *cli) benchLatency(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("node bench latency", flag.ContinueOnError)
	cfg := eddy.DefaultConfig()
	addTuningFlags(fs, &cfg)
	lf := addLogFlags(fs, slog.LevelWarn)
	var o latencyOptions
	var bo benchOptions
	fs.IntVar(&o.partitions, "partitions", 16, "`partitions` of the input stream")
	fs.IntVar(&o.keys, "keys", 10_000, "distinct `keys` of the input events (uniformly random)")
	fs.IntVar(&o.eventSize, "event-size", 32, "`bytes` of each input event (at least 8: its id)")
	fs.IntVar(&o.inFlight, "in-flight", 4096, "most async publishes of the load in flight")
	fs.Float64Var(&o.rate, "rate", 0, "input `events/s` of the load (0: --fraction of the max rate, measured first)")
	fs.Float64Var(&o.fraction, "fraction", 0.5, "the load's share of the measured max rate")
	fs.DurationVar(&o.duration, "duration", 20*time.Second, "how long the load runs")
	fs.DurationVar(&o.warmup, "warmup", time.Second, "the load's first events left out of the percentiles (this long of them)")
	fs.DurationVar(&o.saturate, "saturate", 5*time.Second, "how long the max-rate phase saturates the node")
	fs.DurationVar(&o.tick, "tick", time.Millisecond, "the pacer publishes the events due once per tick")
	fs.DurationVar(&o.drainTimeout, "drain-timeout", time.Minute, "how long to wait for the outputs of the events published")
	fs.StringVar(&bo.dir, "dir", "", "`directory` for NATS and store data (default: a temporary one, removed afterwards)")
	fs.StringVar(&bo.cpuProfile, "cpuprofile", "", "write a CPU profile of each phase to `file`.<phase> (latency-max, latency-load)")
	fs.IntVar(&bo.natsServers, "nats-servers", 0, "run NATS as this many nats-server `processes` (3: a JetStream cluster; use --stream-replicas 3), built from the pinned module (run inside the module); 0: embedded in the bench's process")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	switch {
	case o.partitions < 1 || o.keys < 1 || o.inFlight < 1:
		return errors.New("--partitions, --keys and --in-flight must be positive")
	case o.eventSize < 8 || o.eventSize > cfg.MaxEventSize:
		return fmt.Errorf("--event-size %d: 8..%d", o.eventSize, cfg.MaxEventSize)
	case o.rate < 0 || o.fraction <= 0 || o.fraction > 1:
		return errors.New("want --rate >= 0 and 0 < --fraction <= 1")
	case o.duration <= o.warmup || o.warmup < 0 || o.tick <= 0 || o.saturate <= 0:
		return errors.New("want --duration > --warmup >= 0, --tick > 0 and --saturate > 0")
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	log, err := lf.logger(c.stderr)
	if err != nil {
		return err
	}
	bo.phaseTimeout = o.saturate + o.duration + 2*o.drainTimeout
	lb := &latencyBench{bench: &bench{out: c, cfg: cfg, opts: bo, log: log}, o: o,
		in: partition.Input{Type: latencyType, Partitions: o.partitions}}
	return lb.run(ctx)
}

// latencyBench is one run of `node bench latency`: the embedded NATS server
// and the node (of bench), the producer's keys and, per event of the load,
// when it was published, acknowledged, its output stored and seen.
type latencyBench struct {
	*bench
	o  latencyOptions
	in partition.Input

	keys []string // the event keys
	part []int    // the partition of each key

	samples        atomic.Pointer[samples] // the load's, once it starts
	saturationSeen atomic.Int64            // outputs of the max-rate phase seen

	commits *commitLog
}

// samples are the times of the load's events, by id, in nanoseconds since
// start. pubAt and key are written by the publisher, the others by the
// callbacks of nats.go as acks and outputs come.
type samples struct {
	start    time.Time
	pubAt    []int64 // when the pacer published it
	key      []int32 // index into keys
	ackAt    []atomic.Int64
	inSeq    []atomic.Uint64 // the event's input stream sequence, from its ack
	storedAt []atomic.Int64  // when the server stored the event's output
	seenAt   []atomic.Int64  // when the consumer saw it
	acked    atomic.Int64    // acks handled
	seen     atomic.Int64    // outputs seen
}

func newSamples(n int) *samples {
	return &samples{pubAt: make([]int64, n), key: make([]int32, n), ackAt: make([]atomic.Int64, n),
		inSeq: make([]atomic.Uint64, n), storedAt: make([]atomic.Int64, n), seenAt: make([]atomic.Int64, n)}
}

func (lb *latencyBench) run(ctx context.Context) (err error) {
	o := lb.o
	lb.dir = lb.opts.dir
	cleanup, err := benchDir(&lb.dir, "eddy-bench-latency-")
	if err != nil {
		return err
	}
	defer cleanup()
	if err := lb.startNATS(); err != nil {
		return err
	}
	defer lb.stopNATS()
	cfg := lb.cfg
	lb.printf("node bench latency: %d partitions, %d keys, %d B events, batch-size %d, linger %v, max-batch-records %d, store-sync %v, GOMAXPROCS %d, NATS %s over TCP loopback",
		o.partitions, o.keys, o.eventSize, cfg.BatchSize, cfg.Linger, cfg.MaxBatchRecords, cfg.StoreSync, runtime.GOMAXPROCS(0), server.VERSION)
	lb.keys = make([]string, o.keys)
	lb.part = make([]int, o.keys)
	for k := range lb.keys {
		lb.keys[k] = "k" + strconv.Itoa(k)
		lb.part[k] = partition.Of(lb.keys[k], o.partitions)
	}

	node, reg, err := lb.node(ctx, filepath.Join(lb.dir, "node"), eddy.ActorType{Name: latencyType, Partitions: o.partitions,
		Handler: emitEvent, Outputs: []string{latencyOutput}, ReplicationFactor: eddy.NoReplicas})
	if err != nil {
		return err
	}
	nodeUp := true
	defer func() {
		if nodeUp {
			err = errors.Join(err, stopNode(node))
		}
	}()
	if err := waitRunning(ctx, node); err != nil {
		return err
	}
	// The consumer and the commit log read on connections of their own, so
	// that neither waits behind the publisher's acks.
	cnc, err := nats.Connect(lb.url, nats.Name("eddy bench latency consumer"))
	if err != nil {
		return err
	}
	defer cnc.Close()
	stopConsumer, err := lb.consumeOutputs(ctx, cnc)
	if err != nil {
		return err
	}
	defer stopConsumer()

	maxRate, target := 0.0, o.rate
	if target == 0 {
		if _, err := lb.phase(ctx, "latency-max", func(ctx context.Context) (time.Duration, error) {
			maxRate, err = lb.maxRate(ctx, reg)
			return 0, err
		}); err != nil {
			return fmt.Errorf("max rate: %w", err)
		}
		target = o.fraction * maxRate
		time.Sleep(time.Second) // the partitions commit their outbox marks (MarkDelay) before the load
	}

	mnc, err := nats.Connect(lb.url, nats.Name("eddy bench latency commits"))
	if err != nil {
		return err
	}
	defer mnc.Close()
	if lb.commits, err = startCommitLog(ctx, mnc, latencyType, o.partitions); err != nil {
		return err
	}
	defer lb.commits.stop()
	before := commitHistogram(reg)
	var s *samples
	took, err := lb.phase(ctx, "latency-load", func(ctx context.Context) (took time.Duration, err error) {
		s, took, err = lb.load(ctx, target)
		return took, err
	})
	if err != nil {
		return fmt.Errorf("load at %.0f ev/s: %w", target, err)
	}
	after := commitHistogram(reg)
	eddyP99, err := lb.report(s, target, maxRate, took, after.minus(before))
	if err != nil {
		return err
	}

	// The same load through a raw pipeline of NATS alone, on the same
	// server: the floor eddy's latency stands on at this rate on this machine.
	lb.commits.stop()
	nodeUp = false
	if err := stopNode(node); err != nil {
		return err
	}
	stopRaw, err := lb.rawPipeline(ctx)
	if err != nil {
		return err
	}
	defer stopRaw()
	took, err = lb.phase(ctx, "latency-raw", func(ctx context.Context) (took time.Duration, err error) {
		s, took, err = lb.load(ctx, target)
		return took, err
	})
	if err != nil {
		return fmt.Errorf("raw pipeline at %.0f ev/s: %w", target, err)
	}
	lat := lb.latencies(s, target)
	rawP99 := quantile(lat, 0.99)
	lb.printf("  raw pipeline (an ordered consumer per partition, an async publish with a message id per event, no state, no changelog): %.0f ev/s",
		rate(len(s.seenAt), took))
	lb.printf("bench: latency raw p50=%.2f p99=%.2f p999=%.2f eddy_p99/raw_p99=%.2f",
		ms(quantile(lat, 0.5)), ms(rawP99), ms(quantile(lat, 0.999)), float64(eddyP99)/float64(max(rawP99, 1)))
	return nil
}

// rawPipeline reads each partition of the input with an ordered consumer
// from its end on and publishes, per event, what the bench's actor type
// emits (without its count): the output with a message id, asynchronously.
func (lb *latencyBench) rawPipeline(ctx context.Context) (stop func(), err error) {
	nc, err := nats.Connect(lb.url, nats.Name("eddy bench latency raw pipeline"))
	if err != nil {
		return nil, err
	}
	stops := []func(){nc.Close}
	stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(lb.o.inFlight))
	if err != nil {
		stop()
		return nil, err
	}
	for p := range lb.o.partitions {
		cons, err := js.OrderedConsumer(ctx, latencyType, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{lb.in.Filter(p)}, DeliverPolicy: jetstream.DeliverNewPolicy})
		if err != nil {
			stop()
			return nil, err
		}
		msgID := latencyType + "/" + strconv.Itoa(p) + "/"
		cc, err := cons.Consume(func(msg jetstream.Msg) {
			md, err := msg.Metadata()
			if err != nil || len(msg.Data()) < 8 {
				return
			}
			data, err := msgpack.Marshal(binary.BigEndian.Uint64(msg.Data()))
			if err != nil {
				return
			}
			key := msg.Headers().Get(partition.HeaderKey)
			out := &nats.Msg{Subject: partition.InputSubject(latencyOutput, key), Data: data, Header: nats.Header{}}
			out.Header.Set(jetstream.MsgIDHeader, msgID+strconv.FormatUint(md.Sequence.Stream, 10)+"/0")
			_, _ = js.PublishMsgAsync(out, jetstream.WithStallWait(time.Minute))
		})
		if err != nil {
			stop()
			return nil, err
		}
		stops = append(stops, cc.Stop)
	}
	return stop, nil
}

// emitEvent is the latency bench's actor type: it counts the events of each
// key, as the throughput bench's does, and emits the event's id (its first 8
// bytes) to the output stream, one output per event.
func emitEvent(c *eddy.Context) error {
	if err := countEvent(c); err != nil {
		return err
	}
	d := c.Data()
	if len(d) < 8 {
		return fmt.Errorf("event of %d bytes, no id: %w", len(d), eddy.ErrMalformed)
	}
	return c.Emit(latencyOutput, c.Key(), binary.BigEndian.Uint64(d))
}

// consumeOutputs reads the output stream with an ordered consumer and
// records, for each output, when the server stored it and when it was seen.
func (lb *latencyBench) consumeOutputs(ctx context.Context, nc *nats.Conn) (stop func(), err error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	cons, err := js.OrderedConsumer(ctx, latencyOutput, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, err
	}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		now := time.Now()
		var id uint64
		if err := msgpack.Unmarshal(msg.Data(), &id); err != nil {
			return
		}
		if id&saturationID != 0 {
			lb.saturationSeen.Add(1)
			return
		}
		s := lb.samples.Load()
		if s == nil || id >= uint64(len(s.seenAt)) || s.seenAt[id].Load() != 0 {
			return // not of the load, or a duplicate
		}
		if md, err := msg.Metadata(); err == nil {
			s.storedAt[id].Store(md.Timestamp.Sub(s.start).Nanoseconds())
		}
		s.seenAt[id].Store(now.Sub(s.start).Nanoseconds())
		s.seen.Add(1)
	})
	if err != nil {
		return nil, err
	}
	return cc.Stop, nil
}

// event is the payload of event id: the id, big endian, padded to the event size.
func (lb *latencyBench) event(id uint64) []byte {
	d := make([]byte, lb.o.eventSize)
	binary.BigEndian.PutUint64(d, id)
	return d
}

// maxRate saturates the node for the saturate phase and returns the outputs
// seen per second from when they flow, after its first fifth (at most a
// second) at the earliest. The producer keeps two batches per partition
// ahead of the outputs, so every batch the node takes is full, without a
// backlog that would take long to drain.
func (lb *latencyBench) maxRate(ctx context.Context, reg prometheus.Gatherer) (float64, error) {
	o := lb.o
	before := commitHistogram(reg)
	var failed atomic.Int64
	js, err := jetstream.New(lb.nc, jetstream.WithPublishAsyncMaxPending(o.inFlight),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { failed.Add(1) }))
	if err != nil {
		return 0, err
	}
	window := int64(2 * lb.cfg.BatchSize * o.partitions)
	rng := rand.New(rand.NewPCG(3, 4))
	start := time.Now()
	from, end := start.Add(min(time.Second, o.saturate/5)), start.Add(o.saturate)
	seenFrom := int64(-1)
	var sent int64
	for now := start; now.Before(end); now = time.Now() {
		if seenFrom < 0 && !now.Before(from) {
			if seen := lb.saturationSeen.Load(); seen > 0 { // outputs flow
				from, seenFrom = now, seen
			}
		}
		if sent-lb.saturationSeen.Load() >= window {
			select {
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(100 * time.Microsecond):
			}
			continue
		}
		for range 64 {
			m := lb.in.Msg(lb.keys[rng.IntN(o.keys)], lb.event(saturationID|uint64(sent)))
			if _, err := js.PublishMsgAsync(m, jetstream.WithStallWait(time.Minute)); err != nil {
				return 0, err
			}
			sent++
		}
	}
	if seenFrom < 0 {
		return 0, fmt.Errorf("no output in the first %v of saturation: try a longer --saturate", o.saturate)
	}
	n, took := lb.saturationSeen.Load()-seenFrom, time.Since(from)
	if err := waitAsync(ctx, js); err != nil {
		return 0, err
	}
	if n := failed.Load(); n > 0 {
		return 0, fmt.Errorf("%d events not stored", n)
	}
	if err := waitFor(ctx, o.drainTimeout, func() bool { return lb.saturationSeen.Load() >= sent }); err != nil {
		return 0, fmt.Errorf("outputs of the max-rate phase: %d of %d seen: %w", lb.saturationSeen.Load(), sent, err)
	}
	r := rate(int(n), took)
	h := commitHistogram(reg).minus(before)
	lb.printf("  max rate: %v saturated, %d events ahead of the outputs: %.0f ev/s (%d events in %.0f commits, %.2f ms each on average)",
		o.saturate, window, r, sent, h.count, 1000*h.sum/max(h.count, 1))
	return r, nil
}

// load publishes perSecond events/s for the duration, paced by a ticker in
// small bursts (the events due at each tick), records when each event's ack
// arrives, and waits for every output. It returns the samples and how long
// publishing took.
func (lb *latencyBench) load(ctx context.Context, perSecond float64) (*samples, time.Duration, error) {
	o := lb.o
	n := int(perSecond * o.duration.Seconds())
	if n < 1 {
		return nil, 0, fmt.Errorf("%.1f ev/s for %v is no event", perSecond, o.duration)
	}
	s := newSamples(n)
	var failed atomic.Int64
	js, err := jetstream.New(lb.nc, jetstream.WithPublishAsyncMaxPending(o.inFlight),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { failed.Add(1) }),
		jetstream.WithPublishAsyncAckHandler(func(_ jetstream.JetStream, m *nats.Msg, ack *jetstream.PubAck) {
			now := time.Now()
			if id := binary.BigEndian.Uint64(m.Data); id < uint64(n) {
				s.ackAt[id].Store(now.Sub(s.start).Nanoseconds())
				s.inSeq[id].Store(ack.Sequence)
				s.acked.Add(1)
			}
		}))
	if err != nil {
		return nil, 0, err
	}
	rng := rand.New(rand.NewPCG(5, 6))
	tick := time.NewTicker(o.tick)
	defer tick.Stop()
	s.start = time.Now()
	lb.samples.Store(s)
	for sent := 0; sent < n; {
		select {
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		case <-tick.C:
		}
		now := time.Since(s.start)
		for due := min(n, int(perSecond*now.Seconds())); sent < due; sent++ {
			k := rng.IntN(o.keys)
			s.pubAt[sent], s.key[sent] = now.Nanoseconds(), int32(k)
			if _, err := js.PublishMsgAsync(lb.in.Msg(lb.keys[k], lb.event(uint64(sent))), jetstream.WithStallWait(time.Minute)); err != nil {
				return nil, 0, err
			}
		}
	}
	took := time.Since(s.start)
	if err := waitAsync(ctx, js); err != nil {
		return nil, 0, err
	}
	if f := failed.Load(); f > 0 {
		return nil, 0, fmt.Errorf("%d events not stored", f)
	}
	err = waitFor(ctx, o.drainTimeout, func() bool { return s.acked.Load() >= int64(n) && s.seen.Load() >= int64(n) })
	if err != nil {
		return nil, 0, fmt.Errorf("%d acks and %d outputs of %d events: %w", s.acked.Load(), s.seen.Load(), n, err)
	}
	return s, took, nil
}

// latencies returns the end-to-end latencies of s past the warm-up, sorted.
func (lb *latencyBench) latencies(s *samples, target float64) []time.Duration {
	n := len(s.seenAt)
	var lat []time.Duration
	for id := min(n, int(target*lb.o.warmup.Seconds())); id < n; id++ {
		// An output can be seen before the client has handled its input's
		// ack (they come on connections of their own): that counts as 0.
		lat = append(lat, time.Duration(max(s.seenAt[id].Load()-s.ackAt[id].Load(), 0)))
	}
	slices.Sort(lat)
	return lat
}

// report prints where the latency goes and the bench's result lines, and
// returns the p99 latency.
func (lb *latencyBench) report(s *samples, target, maxRate float64, took time.Duration, h histogram) (time.Duration, error) {
	o := lb.o
	n := len(s.seenAt)
	skip := min(n, int(target*o.warmup.Seconds()))
	lat := lb.latencies(s, target)
	var pubAck, toCommit, toStored, toSeen []time.Duration
	perCommit := map[commitRef]int{} // events per commit that had any
	for id := skip; id < n; id++ {
		ack, seen, stored := s.ackAt[id].Load(), s.seenAt[id].Load(), s.storedAt[id].Load()
		pubAck = append(pubAck, time.Duration(ack-s.pubAt[id]))
		ref, at, ok := lb.commits.of(lb.part[s.key[id]], s.inSeq[id].Load())
		if !ok {
			continue
		}
		perCommit[ref]++
		committed := at.Sub(s.start).Nanoseconds()
		toCommit = append(toCommit, time.Duration(committed-ack))
		toStored = append(toStored, time.Duration(stored-committed))
		toSeen = append(toSeen, time.Duration(seen-stored))
	}
	if len(lat) == 0 {
		return 0, errors.New("no samples past the warm-up")
	}
	for _, ds := range [][]time.Duration{pubAck, toCommit, toStored, toSeen} {
		slices.Sort(ds)
	}
	achieved := rate(n, took)
	share := "--rate"
	if maxRate > 0 {
		share = fmt.Sprintf("%.2f of the max rate", achieved/maxRate)
	}
	lb.printf("  load: %.0f ev/s (%s) for %v: %d events, the first %d (%v) left out",
		achieved, share, o.duration, n, skip, o.warmup)
	lb.printCommits(s.start, perCommit, h)
	lb.printf("  where it goes, p50 / p99 / p999 ms: publish -> ack %s; ack -> changelog commit stored %s; -> output stored %s; -> output seen %s",
		triple(pubAck), triple(toCommit), triple(toStored), triple(toSeen))
	lb.printf("bench: latency p50=%.2f p99=%.2f p999=%.2f rate=%.0f", ms(quantile(lat, 0.5)), ms(quantile(lat, 0.99)), ms(quantile(lat, 0.999)), achieved)
	maxField := strconv.FormatFloat(maxRate, 'f', 0, 64)
	if maxRate == 0 {
		maxField = "unmeasured" // --rate was given
	}
	lb.printf("bench: latency max_rate=%s samples=%d", maxField, len(lat))
	return quantile(lat, 0.99), nil
}

// printCommits prints the commits of the load: how many events each took,
// how often a partition committed, and how long a commit took (eddy's metric).
func (lb *latencyBench) printCommits(start time.Time, perCommit map[commitRef]int, h histogram) {
	var sizes, records []int
	for ref, k := range perCommit {
		sizes = append(sizes, k)
		records = append(records, lb.commits.records(ref))
	}
	slices.Sort(sizes)
	slices.Sort(records)
	gaps := lb.commits.gaps(start)
	slices.Sort(gaps)
	if len(sizes) == 0 {
		return
	}
	lb.printf("  commits with events: %d; events per commit p50 %d p99 %d max %d; changelog records per commit p50 %d p99 %d",
		len(sizes), quantileInt(sizes, 0.5), quantileInt(sizes, 0.99), slices.Max(sizes), quantileInt(records, 0.5), quantileInt(records, 0.99))
	lb.printf("  a partition's commits follow each other after p50 / p99 / p999 ms %s; one commit (changelog, store, forward) takes %.2f ms on average, p50 <= %.1f ms, p99 <= %.1f ms (eddy_partition_commit_seconds)",
		triple(gaps), 1000*h.sum/max(h.count, 1), 1000*h.quantile(0.5), 1000*h.quantile(0.99))
}

// waitFor polls done every millisecond until it holds, for at most timeout.
func waitFor(ctx context.Context, timeout time.Duration, done func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for !done() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// quantile returns the q-quantile (nearest rank) of sorted ds.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func quantileInt(sorted []int, q float64) int {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// triple formats the p50, p99 and p999 of sorted ds in ms.
func triple(sorted []time.Duration) string {
	return fmt.Sprintf("%.2f / %.2f / %.2f", ms(quantile(sorted, 0.5)), ms(quantile(sorted, 0.99)), ms(quantile(sorted, 0.999)))
}

// of returns the commit of partition p that committed the event at input
// sequence seq: the first whose offset reaches it.
func (l *commitLog) of(p int, seq uint64) (commitRef, time.Time, bool) {
	pc := &l.commits[p]
	pc.mu.Lock()
	defer pc.mu.Unlock()
	i := sort.Search(len(pc.list), func(i int) bool { return pc.list[i].offset >= seq })
	if i == len(pc.list) || seq == 0 {
		return commitRef{}, time.Time{}, false
	}
	return commitRef{p, i}, pc.list[i].at, true
}

// records is how many changelog records the commit message of ref holds,
// its meta record included (a commit larger than a message has more, in parts).
func (l *commitLog) records(ref commitRef) int {
	pc := &l.commits[ref.partition]
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return pc.list[ref.i].records
}

// gaps returns the time between each partition's consecutive commits after since.
func (l *commitLog) gaps(since time.Time) []time.Duration {
	var out []time.Duration
	for p := range l.commits {
		pc := &l.commits[p]
		pc.mu.Lock()
		for i := 1; i < len(pc.list); i++ {
			if pc.list[i-1].at.After(since) {
				out = append(out, pc.list[i].at.Sub(pc.list[i-1].at))
			}
		}
		pc.mu.Unlock()
	}
	return out
}

// histogram is eddy_partition_commit_seconds summed over the partitions.
type histogram struct {
	count, sum float64
	bounds     []float64 // upper bounds of the buckets
	cum        []float64 // cumulative counts
}

func commitHistogram(g prometheus.Gatherer) histogram {
	var h histogram
	mfs, err := g.Gather()
	if err != nil {
		return h
	}
	for _, mf := range mfs {
		if mf.GetName() != "eddy_partition_commit_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			hm := m.GetHistogram()
			h.count += float64(hm.GetSampleCount())
			h.sum += hm.GetSampleSum()
			for i, b := range hm.GetBucket() {
				if i == len(h.bounds) {
					h.bounds, h.cum = append(h.bounds, b.GetUpperBound()), append(h.cum, 0)
				}
				h.cum[i] += float64(b.GetCumulativeCount())
			}
		}
	}
	return h
}

// minus is h without what before counted.
func (h histogram) minus(before histogram) histogram {
	d := histogram{count: h.count - before.count, sum: h.sum - before.sum, bounds: h.bounds, cum: slices.Clone(h.cum)}
	for i := range min(len(d.cum), len(before.cum)) {
		d.cum[i] -= before.cum[i]
	}
	return d
}

// quantile is the upper bound of the bucket that holds the q-quantile.
func (h histogram) quantile(q float64) float64 {
	for i, c := range h.cum {
		if c >= q*h.count {
			return h.bounds[i]
		}
	}
	return math.Inf(1) // past the last bucket
}
