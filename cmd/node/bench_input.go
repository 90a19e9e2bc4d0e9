package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/partition"
)

// inputKeyHeader carries an event's key in the layouts whose subjects name
// only the partition.
const inputKeyHeader = "Eddy-Key"

// errReadCut ends a read at its time limit (--read-for): its rate is that of
// the events it delivered until then.
var errReadCut = errors.New("read cut at its time limit")

// The input layouts the bench compares, each loaded with the same events.
const (
	// layoutKeyed is eddy's input stream today: one subject per key, A.<key>
	// transformed by the server to A.<partition>.<key>.
	layoutKeyed = "L1"
	// layoutPartitioned has one subject per partition, B.<partition>, and
	// the key in a header.
	layoutPartitioned = "L2"
	// layoutStreams has one stream per partition, C_<partition> with the
	// subject C.<partition>, and the key in a header.
	layoutStreams = "L3"
)

// inputOptions are the sizes of `node bench input`.
type inputOptions struct {
	events, keys, partitions, size int
	passes                         int
	readFor                        time.Duration
	dir                            string
}

// inputBench measures the read rate of the ways eddy could read its input
// from JetStream, side by side on one embedded NATS server reached over TCP
// loopback, and the server memory each input layout costs.
type inputBench struct {
	out  func(string, ...any)
	o    inputOptions
	srv  *server.Server
	nc   *nats.Conn
	js   jetstream.JetStream
	keys []string // the keys, by index
	part []int    // the partition of each key
	// events holds the key index of each event in publish order, the same
	// for every layout.
	events []int32
	counts []int // events per partition
	batch  int   // eddy's pull batch: PullMaxMessages of its input reader
	// delivered counts the events partition consumers have touched in the
	// current read.
	delivered atomic.Int64
}

// inputRead is one measured read of the input.
type inputRead struct {
	option     string // what the table and the bench: lines call it
	layout     string
	batch      int
	events     int  // events delivered to partition consumers
	want       int  // events it reads when not cut
	cut        bool // stopped at --read-for, before all its events
	took       time.Duration
	cpu        time.Duration // process user+system CPU (client and server)
	unfiltered bool          // reads whole streams: a candidate for the best unfiltered read
	note       string
}

func (r inputRead) rate() float64 { return rate(r.events, r.took) }

func (r inputRead) cpuPerEvent() float64 {
	return float64(r.cpu.Nanoseconds()) / 1000 / float64(max(r.events, 1))
}

// layoutCost is what an input layout costs the server once loaded.
type layoutCost struct {
	layout    string
	subjects  uint64 // NumSubjects, summed over the layout's streams
	bytes     uint64 // stored bytes, summed over its streams
	heapLoad  int64  // Go heap growth (after GC) from loading it
	heapFreed int64  // Go heap freed (after GC) by deleting its streams at the end
	load      time.Duration
}

// benchInput is `node bench input`: it loads one input into three layouts
// and reads it in each way eddy's input path could, measuring events/s.
func (c *cli) benchInput(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("node bench input", flag.ContinueOnError)
	var o inputOptions
	fs.IntVar(&o.events, "events", 1_000_000, "input `events`, loaded into each layout")
	fs.IntVar(&o.keys, "keys", 100_000, "distinct `keys` of the events (uniformly random)")
	fs.IntVar(&o.partitions, "partitions", 8, "`partitions` of the input")
	fs.IntVar(&o.size, "size", 100, "payload `bytes` of each event")
	fs.IntVar(&o.passes, "passes", 2, "read each way this many `times`, in alternating order, and report its fastest")
	fs.DurationVar(&o.readFor, "read-for", 2500*time.Millisecond,
		"cut each read after this long and rate the events it delivered (keeps the run near 2 minutes: one multi-filter consumer on per-key subjects reads < 1 k ev/s)")
	fs.StringVar(&o.dir, "dir", "", "`directory` for NATS data (default: a temporary one, removed at the end)")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if o.events < 1 || o.keys < 1 || o.partitions < 2 || o.size < 0 || o.passes < 1 || o.readFor <= 0 {
		return errors.New("want --events, --keys, --passes >= 1, --partitions >= 2, --size >= 0, --read-for > 0")
	}
	cleanup, err := benchDir(&o.dir, "eddy-bench-input-")
	if err != nil {
		return err
	}
	defer cleanup()
	b := &inputBench{out: func(format string, a ...any) { fmt.Fprintf(c.stdout, format+"\n", a...) }, o: o,
		batch: 2 * partition.DefaultConfig().BatchSize}
	if err := b.start(); err != nil {
		return err
	}
	defer b.stop()
	return b.run(ctx)
}

func (b *inputBench) start() error {
	srv, err := server.NewServer(&server.Options{
		ServerName: "eddy-bench-input",
		Host:       "127.0.0.1",
		Port:       -1,
		JetStream:  true,
		StoreDir:   filepath.Join(b.o.dir, "nats"),
		NoLog:      true,
		NoSigs:     true,
	})
	if err != nil {
		return err
	}
	srv.Start()
	b.srv = srv
	if !srv.ReadyForConnections(10 * time.Second) {
		return errors.New("embedded NATS server did not start")
	}
	if b.nc, err = nats.Connect(srv.ClientURL(), nats.Name("eddy bench input")); err != nil {
		return err
	}
	b.js, err = jetstream.New(b.nc)
	return err
}

func (b *inputBench) stop() {
	if b.nc != nil {
		b.nc.Close()
	}
	b.srv.Shutdown()
	b.srv.WaitForShutdown()
}

func (b *inputBench) run(ctx context.Context) error {
	o := b.o
	start := time.Now()
	defer func() { b.out("node bench input: done in %v", time.Since(start).Round(time.Second)) }()
	b.out("node bench input: %d events of %d B over %d keys, %d partitions, GOMAXPROCS %d, NATS %s over TCP loopback",
		o.events, o.size, o.keys, o.partitions, runtime.GOMAXPROCS(0), server.VERSION)
	b.keys = make([]string, o.keys)
	b.part = make([]int, o.keys)
	for k := range b.keys {
		b.keys[k] = "k" + strconv.Itoa(k)
		b.part[k] = partition.Of(b.keys[k], o.partitions)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	b.events = make([]int32, o.events)
	b.counts = make([]int, o.partitions)
	for i := range b.events {
		k := rng.IntN(o.keys)
		b.events[i] = int32(k)
		b.counts[b.part[k]]++
	}

	var costs []*layoutCost
	for _, l := range []string{layoutKeyed, layoutPartitioned, layoutStreams} {
		c, err := b.load(ctx, l)
		if err != nil {
			return fmt.Errorf("load %s: %w", l, err)
		}
		costs = append(costs, c)
		b.out("  load %s (not timed): %d events in %v (%.0f ev/s)", l, o.events, c.load.Round(time.Millisecond), rate(o.events, c.load))
	}
	b.out("  partitions hold %d..%d events", slices.Min(b.counts), slices.Max(b.counts))

	reads, err := b.reads(ctx)
	if err != nil {
		return err
	}
	for _, c := range costs {
		if c.heapFreed, err = b.drop(ctx, c.layout); err != nil {
			return fmt.Errorf("delete %s: %w", c.layout, err)
		}
	}
	b.report(reads, costs)
	return nil
}

// half is the partitions of a node that owns half of them.
func (b *inputBench) half() []int {
	ps := make([]int, b.o.partitions/2)
	for p := range ps {
		ps[p] = p
	}
	return ps
}

// reads measures each way of reading the input, one after the other.
func (b *inputBench) reads(ctx context.Context) ([]inputRead, error) {
	all := make([]int, b.o.partitions)
	for p := range all {
		all[p] = p
	}
	half := b.half()
	keyedFilter := func(p int) string {
		return partition.Input{Type: "A", Partitions: b.o.partitions, KeyedSubjects: true}.Filter(p)
	}
	partFilter := func(p int) string { return "B." + strconv.Itoa(p) }
	filters := func(f func(int) string, ps []int) []string {
		fs := make([]string, len(ps))
		for i, p := range ps {
			fs[i] = f(p)
		}
		return fs
	}
	halfNote := fmt.Sprintf("reads only partitions %d..%d: %d of %d events", half[0], half[len(half)-1], b.sum(half), b.o.events)
	type step struct {
		option, layout string
		batch          int
		unfiltered     bool
		note           string
		read           func(ctx context.Context, batch int) (int, error)
	}
	var steps []step
	steps = append(steps,
		step{"ref-L1-unfiltered-inline", layoutKeyed, b.batch, true, "one goroutine reads and touches all: no per-partition delivery",
			func(ctx context.Context, batch int) (int, error) { return b.readInline(ctx, "A", batch) }},
		step{"ref-L2-unfiltered-inline", layoutPartitioned, b.batch, true, "as above",
			func(ctx context.Context, batch int) (int, error) { return b.readInline(ctx, "B", batch) }},
	)
	for _, batch := range []int{256, 1024, b.batch, 4096} {
		steps = append(steps,
			step{"1-L1-filtered", layoutKeyed, batch, false, "eddy today: A.<p>.*",
				func(ctx context.Context, batch int) (int, error) {
					return b.readPerPartition(ctx, func(int) string { return "A" }, keyedFilter, true, batch)
				}},
			step{"2-L2-filtered", layoutPartitioned, batch, false, "B.<p>",
				func(ctx context.Context, batch int) (int, error) {
					return b.readPerPartition(ctx, func(int) string { return "B" }, partFilter, false, batch)
				}})
	}
	steps = append(steps,
		step{"3-L1-unfiltered-dispatch", layoutKeyed, b.batch, true, "one consumer, a channel per partition",
			func(ctx context.Context, batch int) (int, error) {
				return b.readDispatch(ctx, "A", nil, all, true, batch)
			}},
		step{"3-L2-unfiltered-dispatch", layoutPartitioned, b.batch, true, "as above",
			func(ctx context.Context, batch int) (int, error) {
				return b.readDispatch(ctx, "B", nil, all, false, batch)
			}},
		step{"4-L1-half-multifilter", layoutKeyed, b.batch, false, halfNote,
			func(ctx context.Context, batch int) (int, error) {
				return b.readDispatch(ctx, "A", filters(keyedFilter, half), half, true, batch)
			}},
		step{"4-L2-half-multifilter", layoutPartitioned, b.batch, false, halfNote,
			func(ctx context.Context, batch int) (int, error) {
				return b.readDispatch(ctx, "B", filters(partFilter, half), half, false, batch)
			}},
		step{"5-L3-stream-per-partition", layoutStreams, b.batch, true, "unfiltered consumer per stream C_<p>",
			func(ctx context.Context, batch int) (int, error) {
				return b.readPerPartition(ctx, func(p int) string { return "C_" + strconv.Itoa(p) }, nil, false, batch)
			}},
	)
	// Each pass reads in the other order, so that a neighbour's load on
	// the shared cores, rising or falling, does not favour the early reads.
	best := make([]inputRead, len(steps))
	for pass := range b.o.passes {
		for j := range steps {
			i := j
			if pass%2 == 1 {
				i = len(steps) - 1 - j
			}
			s := steps[i]
			r := inputRead{option: s.option, layout: s.layout, batch: s.batch, unfiltered: s.unfiltered, note: s.note}
			rctx, cancel := context.WithTimeoutCause(ctx, b.o.readFor, errReadCut)
			b.delivered.Store(0)
			cpu0, start := cpuTime(), time.Now()
			want, err := s.read(rctx, s.batch)
			r.took, r.cpu = time.Since(start), cpuTime()-cpu0
			r.cut = errors.Is(context.Cause(rctx), errReadCut)
			cancel()
			r.events, r.want = int(b.delivered.Load()), want
			switch {
			case r.cut:
			case err != nil:
				return nil, fmt.Errorf("%s batch %d: %w", s.option, s.batch, err)
			case r.events != want:
				return nil, fmt.Errorf("%s batch %d: delivered %d events, want %d", s.option, s.batch, r.events, want)
			}
			if pass == 0 || r.rate() > best[i].rate() {
				best[i] = r
			}
			b.out("  pass %d %-28s %s batch %4d: %d of %d events in %v = %.0f ev/s, %.2f µs CPU/ev",
				pass+1, r.option, r.layout, r.batch, r.events, want, r.took.Round(time.Millisecond), r.rate(), r.cpuPerEvent())
		}
	}
	return best, nil
}

func (b *inputBench) sum(ps []int) int {
	n := 0
	for _, p := range ps {
		n += b.counts[p]
	}
	return n
}

// report prints the table of reads and the cost of each layout.
func (b *inputBench) report(reads []inputRead, costs []*layoutCost) {
	best := 0.0
	for _, r := range reads {
		if r.unfiltered {
			best = max(best, r.rate())
		}
	}
	b.out("")
	b.out("%-28s %-6s %5s %9s %10s %9s %6s  %s", "option", "layout", "batch", "events", "events/s", "cpu µs/ev", "ratio", "note")
	for _, r := range reads {
		note := r.note
		if r.cut {
			note = fmt.Sprintf("cut: %d of %d events; %s", r.events, r.want, note)
		}
		b.out("%-28s %-6s %5d %9d %10.0f %9.2f %6.2f  %s", r.option, r.layout, r.batch, r.events, r.rate(),
			r.cpuPerEvent(), r.rate()/best, note)
	}
	b.out("(fastest of %d passes, each read cut after %v; ratio: to the best unfiltered read; cpu: the whole process,", b.o.passes, b.o.readFor)
	b.out(" NATS server and client, on %d cores)", runtime.NumCPU())
	b.out("")
	b.out("layout  subjects  stored MB  heap after load MB  heap freed on delete MB")
	for _, c := range costs {
		b.out("%-6s  %8d  %9.1f  %18.1f  %23.1f", c.layout, c.subjects, float64(c.bytes)/(1<<20),
			float64(c.heapLoad)/(1<<20), float64(c.heapFreed)/(1<<20))
	}
	perSubject := func(f func(*layoutCost) int64) float64 {
		return float64(f(costs[0])-f(costs[1])) / float64(costs[0].subjects-costs[1].subjects)
	}
	b.out("(Go heap of the process after GC, holding the in-process server. After load: with the write caches of each stream's")
	b.out(" last block; freed on delete, at the end: what stays. L1 over L2 per subject, K=%d keys: %.0f B after load, %.0f B freed on delete)",
		b.o.keys, perSubject(func(c *layoutCost) int64 { return c.heapLoad }), perSubject(func(c *layoutCost) int64 { return c.heapFreed }))
	for _, r := range reads {
		b.out("bench: input option=%s-b%d rate=%d", r.option, r.batch, int64(r.rate()))
	}
	for _, c := range costs {
		b.out("bench: input layout=%s keys=%d subjects=%d heap_load=%d heap_freed=%d", c.layout, b.o.keys, c.subjects, c.heapLoad, c.heapFreed)
	}
}

// streamsOf returns the streams of a layout.
func (b *inputBench) streamsOf(layout string) []string {
	switch layout {
	case layoutKeyed:
		return []string{"A"}
	case layoutPartitioned:
		return []string{"B"}
	}
	names := make([]string, b.o.partitions)
	for p := range names {
		names[p] = "C_" + strconv.Itoa(p)
	}
	return names
}

// load creates a layout's streams, publishes the events to them
// asynchronously, and measures what the loaded layout costs.
func (b *inputBench) load(ctx context.Context, layout string) (*layoutCost, error) {
	o := b.o
	c := &layoutCost{layout: layout}
	heap0 := heapAfterGC()
	cfg := jetstream.StreamConfig{Storage: jetstream.FileStorage, Replicas: 1}
	switch layout {
	case layoutKeyed: // as partition.EnsureInputStream
		cfg.Name, cfg.Subjects = "A", []string{"A.*"}
		cfg.SubjectTransform = &jetstream.SubjectTransformConfig{Source: "A.*",
			Destination: fmt.Sprintf("A.{{partition(%d,1)}}.{{wildcard(1)}}", o.partitions)}
	case layoutPartitioned:
		cfg.Name, cfg.Subjects = "B", []string{"B.*"}
	}
	if layout == layoutStreams {
		for p, name := range b.streamsOf(layout) {
			cfg.Name, cfg.Subjects = name, []string{"C." + strconv.Itoa(p)}
			if _, err := b.js.CreateStream(ctx, cfg); err != nil {
				return nil, err
			}
		}
	} else if _, err := b.js.CreateStream(ctx, cfg); err != nil {
		return nil, err
	}
	var failed atomic.Int64
	js, err := jetstream.New(b.nc, jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { failed.Add(1) }))
	if err != nil {
		return nil, err
	}
	payload := make([]byte, o.size)
	subjects := make([]string, o.partitions) // B.<p> or C.<p>
	for p := range subjects {
		subjects[p] = map[string]string{layoutPartitioned: "B.", layoutStreams: "C."}[layout] + strconv.Itoa(p)
	}
	start := time.Now()
	for _, k := range b.events {
		m := &nats.Msg{Data: payload}
		if layout == layoutKeyed {
			m.Subject = "A." + changelog.EncodeKey(b.keys[k])
		} else {
			m.Subject = subjects[b.part[k]]
			m.Header = nats.Header{inputKeyHeader: []string{b.keys[k]}}
		}
		if _, err := js.PublishMsgAsync(m, jetstream.WithStallWait(time.Minute)); err != nil {
			return nil, err
		}
	}
	if err := waitAsync(ctx, js); err != nil {
		return nil, err
	}
	c.load = time.Since(start)
	if n := failed.Load(); n > 0 {
		return nil, fmt.Errorf("%d events not stored", n)
	}
	c.heapLoad = heapAfterGC() - heap0
	var msgs uint64
	for _, name := range b.streamsOf(layout) {
		st, err := b.js.Stream(ctx, name)
		if err != nil {
			return nil, err
		}
		info, err := st.Info(ctx) // no subject details: NumSubjects only
		if err != nil {
			return nil, err
		}
		msgs += info.State.Msgs
		c.subjects += uint64(info.State.NumSubjects)
		c.bytes += info.State.Bytes
	}
	if msgs != uint64(o.events) {
		return nil, fmt.Errorf("%s holds %d events, want %d", layout, msgs, o.events)
	}
	return c, nil
}

// drop deletes a layout's streams and returns the heap that freed.
func (b *inputBench) drop(ctx context.Context, layout string) (int64, error) {
	heap0 := heapAfterGC()
	for _, name := range b.streamsOf(layout) {
		if err := b.js.DeleteStream(ctx, name); err != nil {
			return 0, err
		}
	}
	return heap0 - heapAfterGC(), nil
}

// readPerPartition reads each partition with an ordered consumer of its own
// (on stream(p), filtered on filter(p) unless filter is nil), all at once,
// the reading goroutine touching each event, until each partition has all
// of its events. It returns the events it should deliver.
func (b *inputBench) readPerPartition(ctx context.Context, stream, filter func(int) string, keyed bool, batch int) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, b.o.partitions)
	var wg sync.WaitGroup
	for p := range b.o.partitions {
		wg.Go(func() {
			var fs []string
			if filter != nil {
				fs = []string{filter(p)}
			}
			it, err := b.messages(ctx, stream(p), fs, batch)
			if err != nil {
				errs[p] = err
				cancel()
				return
			}
			defer it.Stop()
			next := func() (jetstream.Msg, error) { return it.Next(jetstream.NextContext(ctx)) }
			if errs[p] = b.consume(p, b.counts[p], keyed, next); errs[p] != nil {
				cancel()
			}
		})
	}
	wg.Wait()
	return b.o.events, errors.Join(errs...)
}

// readDispatch reads stream with one ordered consumer (filtered on filters
// unless nil) and dispatches each event to the channel of its partition,
// which a goroutine per partition of parts drains, touching each event,
// until each has all of its events. It returns the events it should deliver.
func (b *inputBench) readDispatch(ctx context.Context, stream string, filters []string, parts []int, keyed bool, batch int) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	total := b.sum(parts)
	chans := make([]chan jetstream.Msg, b.o.partitions) // nil for partitions not in parts
	for _, p := range parts {
		chans[p] = make(chan jetstream.Msg, 1024)
	}
	errs := make([]error, len(parts)+1)
	var wg sync.WaitGroup
	wg.Go(func() {
		if errs[0] = b.dispatch(ctx, stream, filters, chans, total, batch); errs[0] != nil {
			cancel()
		}
	})
	for i, p := range parts {
		wg.Go(func() {
			next := func() (jetstream.Msg, error) {
				select {
				case m := <-chans[p]:
					return m, nil
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			if errs[i+1] = b.consume(p, b.counts[p], keyed, next); errs[i+1] != nil {
				cancel()
			}
		})
	}
	wg.Wait()
	return total, errors.Join(errs...)
}

// dispatch reads total events of stream and sends each to the channel of
// the partition its subject names.
func (b *inputBench) dispatch(ctx context.Context, stream string, filters []string, chans []chan jetstream.Msg, total, batch int) error {
	it, err := b.messages(ctx, stream, filters, batch)
	if err != nil {
		return err
	}
	defer it.Stop()
	for range total {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return err
		}
		p, err := subjectPartition(msg.Subject(), len(chans))
		if err != nil {
			return err
		}
		if chans[p] == nil {
			return fmt.Errorf("event of partition %d, not read: %s", p, msg.Subject())
		}
		select {
		case chans[p] <- msg:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// readInline reads the whole stream with one ordered consumer and touches
// each event in the reading goroutine: the read rate without delivery to
// partitions, for reference. It returns the events it should deliver.
func (b *inputBench) readInline(ctx context.Context, stream string, batch int) (int, error) {
	it, err := b.messages(ctx, stream, nil, batch)
	if err != nil {
		return b.o.events, err
	}
	defer it.Stop()
	var bytes, uncounted int
	defer func() { b.delivered.Add(int64(uncounted)) }()
	for range b.o.events {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return b.o.events, err
		}
		p, err := subjectPartition(msg.Subject(), b.o.partitions)
		if err != nil {
			return b.o.events, err
		}
		n, err := b.touch(msg, p, stream == "A")
		if err != nil {
			return b.o.events, err
		}
		bytes += n
		if uncounted++; uncounted == 1024 {
			b.delivered.Add(1024)
			uncounted = 0
		}
	}
	if bytes != b.o.events*b.o.size {
		return b.o.events, fmt.Errorf("read %d payload bytes, want %d", bytes, b.o.events*b.o.size)
	}
	return b.o.events, nil
}

// messages opens an ordered consumer of the whole of stream, on filters
// unless nil, pulling batch events at a time.
func (b *inputBench) messages(ctx context.Context, stream string, filters []string, batch int) (jetstream.MessagesContext, error) {
	cons, err := b.js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: filters,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, err
	}
	return cons.Messages(jetstream.PullMaxMessages(batch))
}

// consume is a partition's consumer: it takes want events from next and
// touches each as eddy's partition does.
func (b *inputBench) consume(p, want int, keyed bool, next func() (jetstream.Msg, error)) error {
	var bytes, uncounted int
	defer func() { b.delivered.Add(int64(uncounted)) }()
	for range want {
		msg, err := next()
		if err != nil {
			return fmt.Errorf("partition %d: %w", p, err)
		}
		n, err := b.touch(msg, p, keyed)
		if err != nil {
			return err
		}
		bytes += n
		if uncounted++; uncounted == 1024 {
			b.delivered.Add(1024)
			uncounted = 0
		}
	}
	if bytes != want*b.o.size {
		return fmt.Errorf("partition %d: read %d payload bytes, want %d", p, bytes, want*b.o.size)
	}
	return nil
}

// touch does with an event what eddy's partition does before its handler
// runs (its metadata, subject, headers, data, key), checks that the event
// belongs to partition p, and returns its payload size.
func (b *inputBench) touch(msg jetstream.Msg, p int, keyed bool) (int, error) {
	if _, err := msg.Metadata(); err != nil {
		return 0, err
	}
	subj, hdr, data := msg.Subject(), msg.Headers(), msg.Data()
	var key string
	if keyed {
		k, err := changelog.DecodeKey(subj[strings.LastIndexByte(subj, '.')+1:])
		if err != nil {
			return 0, err
		}
		key = k
	} else {
		key = hdr.Get(inputKeyHeader)
	}
	if q := partition.Of(key, b.o.partitions); q != p {
		return 0, fmt.Errorf("event of key %q (partition %d) read by partition %d", key, q, p)
	}
	return len(data), nil
}

// subjectPartition returns the partition an input subject names in its
// second token: A.<p>.<key>, B.<p>.
func subjectPartition(subj string, partitions int) (int, error) {
	i := strings.IndexByte(subj, '.')
	rest := subj[i+1:]
	if j := strings.IndexByte(rest, '.'); j >= 0 {
		rest = rest[:j]
	}
	p, err := strconv.Atoi(rest)
	if i < 0 || err != nil || p < 0 || p >= partitions {
		return 0, fmt.Errorf("subject %q names no partition", subj)
	}
	return p, nil
}

// heapAfterGC returns the bytes of live Go heap after a collection.
func heapAfterGC() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// cpuTime returns the user and system CPU time the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
