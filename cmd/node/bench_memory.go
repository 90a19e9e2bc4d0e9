package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"iter"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/examples/apps"
	"github.com/eddyrt/eddy/internal/natsproc"
	"github.com/eddyrt/eddy/partition"
)

// memoryOptions are the sizes and knobs of `node bench memory`.
type memoryOptions struct {
	keys, partitions, inFlight int
	dir                        string
	msgIDs, natsSync           bool
	nodeFlags, natsConfig      []string
	timeout                    time.Duration
}

// memoryBench is one run of `node bench memory`: one nats-server process,
// one node process running the bank on it, and a plain JetStream producer.
type memoryBench struct {
	out  func(format string, a ...any)
	opts memoryOptions
	dir  string
	exe  string

	nats *natsproc.Cluster
	nc   *nats.Conn // the producer's connection; it follows a restarted server
	node *nodeProc
}

// nodeProc is the node process under measurement.
type nodeProc struct {
	cmd     *exec.Cmd
	exited  chan struct{}
	http    string // host:port of its HTTP API
	logPath string
}

// depositAmount is what each deposit puts into its account.
const depositAmount = 1000

// publishAckTimeout bounds the wait for one publish's ack, and for room
// among the publishes in flight: a stored event is acknowledged in
// milliseconds, so an ack this late is lost and its event is sent again.
const publishAckTimeout = 30 * time.Second

// settleSamples bounds how long measurements wait for memory to settle: a
// sample a second until two in a row agree within settleTolerance.
const (
	settleSamples   = 30
	settleTolerance = 0.01
)

// benchMemory measures what one node and its NATS server hold in memory and
// on disk for a given number of keys: N distinct bank accounts get one
// deposit each, published by a plain nats.go JetStream client to a node
// process that runs on a nats-server process. Once the node has processed
// every deposit and memory has settled, it reads the resident memory of
// both processes and the node's Go heap; then it restarts nats-server on its
// store and times how long until every stream answers again.
func (c *cli) benchMemory(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("node bench memory", flag.ContinueOnError)
	var o memoryOptions
	fs.IntVar(&o.keys, "keys", 10_000_000, "distinct `keys` (bank accounts), one deposit each")
	fs.IntVar(&o.partitions, "partitions", defaultPartitions, "`partitions` of the bank")
	fs.IntVar(&o.inFlight, "in-flight", 4096, "most unacknowledged async `publishes` of the producer")
	fs.StringVar(&o.dir, "dir", "", "`directory` for NATS's store, the node's data and the logs (default: a temporary one, removed at the end)")
	fs.BoolVar(&o.msgIDs, "msg-ids", true, "give each deposit a Nats-Msg-Id, so that a retried publish is stored once (the server keeps the ids for the duplicate window)")
	fs.BoolVar(&o.natsSync, "nats-sync", false, "run nats-server with sync_interval: always (fsync before every ack)")
	fs.Var(repeatedFlag{&o.nodeFlags}, "node-flag", "extra `flag` for `node run`, e.g. --node-flag=--snapshot-every=100000 (repeatable)")
	fs.Var(repeatedFlag{&o.natsConfig}, "nats-config", "extra nats-server config `line`, e.g. --nats-config='prof_port: 6061' (repeatable)")
	fs.DurationVar(&o.timeout, "timeout", time.Hour, "give up on a wait (start, load, processing, restart) after this long")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if o.keys < 1 || o.partitions < 1 || o.inFlight < 1 || o.timeout <= 0 {
		return errors.New("--keys, --partitions, --in-flight and --timeout must be positive")
	}
	cleanup, err := benchDir(&o.dir, "eddy-bench-memory-")
	if err != nil {
		return err
	}
	defer cleanup()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	mb := &memoryBench{out: func(format string, a ...any) { fmt.Fprintf(c.stdout, format+"\n", a...) }, opts: o, dir: o.dir, exe: exe}
	return mb.run(ctx)
}

// memorySample is what the processes hold at one moment.
type memorySample struct {
	rss, heap, natsRSS int64
}

func (mb *memoryBench) run(ctx context.Context) error {
	o := mb.opts
	defer mb.close()
	if err := mb.startNATS(ctx); err != nil {
		return err
	}
	if err := mb.startNode(ctx); err != nil {
		return err
	}
	idle, err := mb.sample(ctx)
	if err != nil {
		return err
	}
	mb.out("bench memory: %d keys, %d partitions; node process (node flags %q) on a nats-server process (%s)",
		o.keys, o.partitions, o.nodeFlags, mb.dir)
	mb.out("  started: node rss %.1f MB, heap %.1f MB; nats-server rss %.1f MB", inMB(idle.rss), inMB(idle.heap), inMB(idle.natsRSS))

	start := time.Now()
	if err := mb.load(ctx); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	loaded := time.Since(start)
	mb.out("  published %d deposits in %v (%.0f/s)", o.keys, loaded.Round(time.Millisecond), rate(o.keys, loaded))
	if err := mb.waitProcessed(ctx); err != nil {
		return err
	}
	processed := time.Since(start)
	mb.out("  processed all %d deposits %v after the first publish (%.0f/s)", o.keys, processed.Round(time.Millisecond), rate(o.keys, processed))

	settled, err := mb.settle(ctx)
	if err != nil {
		return err
	}
	natsDisk, natsApparent, err := diskUsage(mb.nats.StoreDir(0))
	if err != nil {
		return err
	}
	eddyDisk, eddyApparent, err := diskUsage(mb.nodeDataDir())
	if err != nil {
		return err
	}
	mb.out("  settled: node rss %.1f MB, heap %.1f MB; nats-server rss %.1f MB; disk (allocated, apparent): nats store %.1f MB, %.1f MB; node data %.1f MB, %.1f MB",
		inMB(settled.rss), inMB(settled.heap), inMB(settled.natsRSS), inMB(natsDisk), inMB(natsApparent), inMB(eddyDisk), inMB(eddyApparent))
	restart, streams, err := mb.restartNATS(ctx)
	if err != nil {
		return fmt.Errorf("restart nats-server: %w", err)
	}
	after, err := mb.settle(ctx)
	if err != nil {
		return err
	}
	mb.out("  nats-server restarted: %d streams answer %v after its start; then node rss %.1f MB, heap %.1f MB; nats-server rss %.1f MB",
		streams, restart.Round(time.Millisecond), inMB(after.rss), inMB(after.heap), inMB(after.natsRSS))
	if !mb.node.running() {
		return fmt.Errorf("the node exited during the nats-server restart\n%s", logTail(mb.node.logPath, 4096))
	}
	mb.out("bench: memory keys=%d rss_mb=%.1f heap_mb=%.1f nats_rss_mb=%.1f nats_restart_s=%.2f",
		o.keys, inMB(settled.rss), inMB(settled.heap), inMB(settled.natsRSS), restart.Seconds())
	mb.out("bench: memory nats_rss_after_restart_mb=%.1f nats_disk_mb=%.1f eddy_disk_mb=%.1f load_rate=%.0f load_s=%.1f process_s=%.1f",
		inMB(after.natsRSS), inMB(natsDisk), inMB(eddyDisk), rate(o.keys, loaded), loaded.Seconds(), processed.Seconds())
	return nil
}

// natsStopTimeout bounds a graceful stop of nats-server: it writes each
// stream's index on the way down, seconds for millions of messages here, so
// this only ends a server that hangs.
const natsStopTimeout = 2 * time.Minute

// startNATS starts the nats-server process (JetStream on a store under the
// bench's directory) and connects the producer.
func (mb *memoryBench) startNATS(ctx context.Context) error {
	c, err := natsproc.New(natsproc.Config{Servers: 1, Dir: filepath.Join(mb.dir, "nats"), SyncAlways: mb.opts.natsSync,
		ExtraConfig: mb.opts.natsConfig, StartTimeout: mb.opts.timeout, StopTimeout: natsStopTimeout})
	if err != nil {
		return err
	}
	mb.nats = c
	if err := c.StartAll(); err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, natsReadyTimeout)
	defer cancel()
	if err := c.WaitReady(rctx); err != nil {
		return err
	}
	mb.nc, err = nats.Connect(c.URL(0), nats.Name("eddy bench memory"), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	return err
}

func (mb *memoryBench) nodeDataDir() string { return filepath.Join(mb.dir, "node") }

// startNode starts `node run` with the bank on the nats-server, with the
// default config but for what the bench needs (and --node-flag), and waits
// until every partition runs.
func (mb *memoryBench) startNode(ctx context.Context) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	n := &nodeProc{http: "127.0.0.1:" + strconv.Itoa(port), logPath: filepath.Join(mb.dir, "node.log"), exited: make(chan struct{})}
	args := []string{"run", "--app", "bank", "--partitions", strconv.Itoa(mb.opts.partitions),
		"--nats", mb.nats.URL(0), "--data-dir", mb.nodeDataDir(), "--http", n.http}
	args = append(args, mb.opts.nodeFlags...)
	logf, err := os.Create(n.logPath)
	if err != nil {
		return err
	}
	n.cmd = exec.Command(mb.exe, args...)
	n.cmd.Stdout, n.cmd.Stderr = io.Discard, logf
	if err := n.cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	go func() {
		_ = n.cmd.Wait()
		logf.Close()
		close(n.exited)
	}()
	mb.node = n
	return mb.waitFor(ctx, "node start", 50*time.Millisecond, func(ctx context.Context) error {
		ps, err := mb.partitionStatus(ctx)
		if err != nil {
			return err
		}
		running := 0
		for _, p := range ps {
			if p.Running {
				running++
			}
		}
		if running < mb.opts.partitions {
			return fmt.Errorf("%d of %d partitions run", running, mb.opts.partitions)
		}
		return nil
	})
}

func (n *nodeProc) running() bool {
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// stop stops the node gracefully (SIGTERM), or kills it if it takes longer
// than its own stop timeout allows.
func (n *nodeProc) stop() {
	if !n.running() {
		return
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
	case <-time.After(stopTimeout + 10*time.Second):
		_ = n.cmd.Process.Kill()
		<-n.exited
	}
}

func (mb *memoryBench) close() {
	if mb.node != nil {
		mb.node.stop()
	}
	if mb.nc != nil {
		mb.nc.Close()
	}
	if mb.nats != nil {
		_ = mb.nats.Close()
	}
}

// partitionStatus asks the node's /v1/status.
func (mb *memoryBench) partitionStatus(ctx context.Context) ([]eddy.PartitionStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var body struct {
		Partitions []eddy.PartitionStatus `json:"partitions"`
		Error      string                 `json:"error"`
	}
	code, err := getJSON(ctx, "http://"+mb.node.http+"/v1/status", &body)
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("/v1/status: %d %s", code, body.Error)
	}
	return body.Partitions, err
}

// waitFor calls check every interval until it returns nil, failing when the
// node process exits or --timeout passes.
func (mb *memoryBench) waitFor(ctx context.Context, what string, every time.Duration, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, mb.opts.timeout)
	defer cancel()
	for {
		err := check(ctx)
		if err == nil {
			return nil
		}
		if !mb.node.running() {
			return fmt.Errorf("%s: the node exited (last: %w)\n%s", what, err, logTail(mb.node.logPath, 4096))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last: %w)", what, ctx.Err(), err)
		case <-time.After(every):
		}
	}
}

// accountKey is the bank account of the i-th deposit.
func accountKey(i int) string { return "acct-" + strconv.Itoa(i) }

// maxPublishRounds bounds how often the deposits whose publish failed are
// sent again; a failure that outlasts this many rounds of 30 s timeouts is
// not transient.
const maxPublishRounds = 10

// load publishes one deposit to each account, as any producer with a plain
// JetStream client would: asynchronously, with --in-flight publishes
// unacknowledged at most, sending again those that failed. With --msg-ids
// each deposit carries a message id, so a retry of one that was stored after
// all (its ack lost) is dropped by the stream's duplicate window.
func (mb *memoryBench) load(ctx context.Context) error {
	o := mb.opts
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	js, err := jetstream.New(mb.nc, jetstream.WithPublishAsyncMaxPending(o.inFlight), jetstream.WithPublishAsyncTimeout(publishAckTimeout))
	if err != nil {
		return err
	}
	data, err := msgpack.Marshal(apps.Op{Kind: "deposit", Amount: depositAmount})
	if err != nil {
		return err
	}
	in := partition.Input{Type: apps.BankType, Partitions: o.partitions}
	msgs := func(yield func(*nats.Msg) bool) {
		for i := range o.keys {
			key := accountKey(i)
			m := in.Msg(key, data)
			if o.msgIDs {
				if m.Header == nil {
					m.Header = nats.Header{}
				}
				m.Header.Set(jetstream.MsgIDHeader, "deposit-"+key)
			}
			if !yield(m) {
				return
			}
		}
	}
	for round := 1; ; round++ {
		failed, err := publishAll(ctx, js, o.inFlight, msgs)
		if err != nil {
			return err
		}
		if len(failed) == 0 {
			break
		}
		if round == maxPublishRounds {
			return fmt.Errorf("%d deposits not stored after %d rounds of publishes", len(failed), round)
		}
		mb.out("  %d publishes failed; sending them again", len(failed))
		msgs = slices.Values(failed)
	}
	st, err := js.Stream(ctx, apps.BankType)
	if err != nil {
		return err
	}
	switch n := st.CachedInfo().State.Msgs; {
	case n < uint64(o.keys) || o.msgIDs && n != uint64(o.keys):
		return fmt.Errorf("the input stream holds %d deposits, %d were sent", n, o.keys)
	case n > uint64(o.keys):
		mb.out("  the input stream holds %d deposits: %d retried publishes were stored twice (no --msg-ids)", n, n-uint64(o.keys))
	}
	return nil
}

// publishAll publishes msgs asynchronously, at most inFlight of them waiting
// for their ack, and returns those whose publish failed: no ack within
// publishAckTimeout, or an error from the stream. A publish the client
// refuses (its connection is down, or acks stall) is tried again in place.
func publishAll(ctx context.Context, js jetstream.JetStream, inFlight int, msgs iter.Seq[*nats.Msg]) ([]*nats.Msg, error) {
	acks := make(chan jetstream.PubAckFuture, inFlight)
	failedc := make(chan []*nats.Msg, 1)
	go func() {
		var failed []*nats.Msg
		for f := range acks {
			select {
			case <-f.Ok():
			case <-f.Err():
				failed = append(failed, f.Msg())
			}
		}
		failedc <- failed
	}()
	var err error
	for m := range msgs {
		var f jetstream.PubAckFuture
		if f, err = publishAsync(ctx, js, m); err != nil {
			break
		}
		acks <- f
	}
	close(acks)
	return <-failedc, err
}

// publishAsync starts the publish of m, trying again every 100 ms while the
// client refuses it, until ctx ends.
func publishAsync(ctx context.Context, js jetstream.JetStream, m *nats.Msg) (jetstream.PubAckFuture, error) {
	for {
		f, err := js.PublishMsgAsync(m, jetstream.WithStallWait(publishAckTimeout))
		if err == nil {
			return f, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("publish: %w (last error: %w)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitProcessed waits until every partition has committed the last deposit
// of its input, then checks the balance of the first and the last account.
func (mb *memoryBench) waitProcessed(ctx context.Context) error {
	js, err := jetstream.New(mb.nc)
	if err != nil {
		return err
	}
	st, err := js.Stream(ctx, apps.BankType)
	if err != nil {
		return err
	}
	last := make([]uint64, mb.opts.partitions)
	for p := range last {
		m, err := st.GetLastMsgForSubject(ctx, partition.Input{Type: apps.BankType, Partitions: mb.opts.partitions}.Filter(p))
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			continue // no deposit in this partition
		case err != nil:
			return fmt.Errorf("last deposit of partition %d: %w", p, err)
		}
		last[p] = m.Sequence
	}
	err = mb.waitFor(ctx, "processing", 200*time.Millisecond, func(ctx context.Context) error {
		ps, err := mb.partitionStatus(ctx)
		if err != nil {
			return err
		}
		var behind []string
		for _, s := range ps {
			if !s.Running || s.Offset < last[s.Partition] {
				behind = append(behind, fmt.Sprintf("%d at %d of %d (%s)", s.Partition, s.Offset, last[s.Partition], s.State))
			}
		}
		if len(ps) < len(last) || len(behind) > 0 {
			return fmt.Errorf("%d partitions listed, behind: %s", len(ps), strings.Join(behind, ", "))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, key := range []string{accountKey(0), accountKey(mb.opts.keys - 1)} {
		var body struct {
			Value apps.Account `json:"value"`
		}
		if _, err := getJSON(ctx, "http://"+mb.node.http+"/v1/state/bank/"+key, &body); err != nil {
			return err
		}
		if body.Value.Deposited != depositAmount {
			return fmt.Errorf("account %s: deposited %d, want %d", key, body.Value.Deposited, depositAmount)
		}
	}
	return nil
}

// sample reads the node's resident memory and Go heap in use, and
// nats-server's resident memory.
func (mb *memoryBench) sample(ctx context.Context) (memorySample, error) {
	var s memorySample
	var err error
	if s.rss, err = residentBytes(mb.node.cmd.Process.Pid); err != nil {
		return s, err
	}
	heap, err := scrapeGauge(ctx, "http://"+mb.node.http+"/metrics", "go_memstats_heap_inuse_bytes")
	if err != nil {
		return s, err
	}
	s.heap = int64(heap)
	s.natsRSS, err = residentBytes(mb.nats.Pid(0))
	return s, err
}

// settle samples memory once a second until two samples in a row agree on
// both processes' resident memory within settleTolerance (at most
// settleSamples seconds), and returns the last.
func (mb *memoryBench) settle(ctx context.Context) (memorySample, error) {
	prev, err := mb.sample(ctx)
	if err != nil {
		return prev, err
	}
	near := func(a, b int64) bool { return abs(a-b) <= int64(settleTolerance*float64(max(a, b))) }
	for range settleSamples {
		select {
		case <-ctx.Done():
			return prev, ctx.Err()
		case <-time.After(time.Second):
		}
		cur, err := mb.sample(ctx)
		if err != nil {
			return cur, err
		}
		if near(prev.rss, cur.rss) && near(prev.natsRSS, cur.natsRSS) {
			return cur, nil
		}
		prev = cur
	}
	return prev, nil
}

func abs(n int64) int64 {
	if n < 0 {
		return -n
	}
	return n
}

// restartNATS stops nats-server gracefully (SIGTERM, and waits for it to
// exit), starts it again on the same store and returns the time from its
// start until its /healthz says ready and every stream that existed answers
// a stream info request with at least the messages it held before.
func (mb *memoryBench) restartNATS(ctx context.Context) (time.Duration, int, error) {
	js, err := jetstream.New(mb.nc)
	if err != nil {
		return 0, 0, err
	}
	held := map[string]uint64{}
	infos := js.ListStreams(ctx)
	for info := range infos.Info() {
		held[info.Config.Name] = info.State.Msgs
	}
	if err := infos.Err(); err != nil {
		return 0, 0, err
	}
	if err := mb.nats.Stop(0); err != nil {
		return 0, 0, err
	}
	start := time.Now()
	if err := mb.nats.Start(0); err != nil {
		return 0, 0, err
	}
	var probe *nats.Conn
	defer func() {
		if probe != nil {
			probe.Close()
		}
	}()
	err = mb.waitFor(ctx, "nats-server restart", 10*time.Millisecond, func(ctx context.Context) error {
		var health struct {
			Status string `json:"status"`
			Error  string `json:"error"`
		}
		code, err := getJSON(ctx, mb.nats.MonitorURL(0)+"/healthz", &health)
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("healthz %d %s: %s", code, health.Status, health.Error)
		}
		if probe == nil || probe.IsClosed() {
			if probe, err = nats.Connect(mb.nats.URL(0), nats.NoReconnect(), nats.Timeout(time.Second)); err != nil {
				return err
			}
		}
		pjs, err := jetstream.New(probe)
		if err != nil {
			return err
		}
		for name, n := range held {
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			s, err := pjs.Stream(rctx, name)
			cancel()
			if err != nil {
				return fmt.Errorf("stream %s: %w", name, err)
			}
			if got := s.CachedInfo().State.Msgs; got < n {
				return fmt.Errorf("stream %s holds %d messages, %d before the restart", name, got, n)
			}
		}
		return nil
	})
	return time.Since(start), len(held), err
}

// logTail returns up to limit bytes from the end of the file at path.
func logTail(path string, limit int64) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err.Error()
	}
	b := make([]byte, min(limit, st.Size()))
	n, _ := f.ReadAt(b, st.Size()-int64(len(b)))
	return fmt.Sprintf("--- last %d bytes of %s:\n%s", n, path, b[:n])
}
