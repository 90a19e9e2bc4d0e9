package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/internal/natsproc"
	"github.com/eddyrt/eddy/internal/pgtest"
	"github.com/eddyrt/eddy/internal/workload"
)

// The NATS chaos test's knobs, from the environment.
const (
	// envNATSChaos runs TestNATSChaos: "short" (a couple of minutes per
	// NATS topology), or "long" (chaosLongFor per topology; give it
	// go test -timeout 60m); unset, "off" or "0" skips it.
	envNATSChaos = "EDDY_NATS_CHAOS"
	// envNATSChaosSeed replays a fault schedule and input (the timing of
	// the machine still varies).
	envNATSChaosSeed = "EDDY_NATS_CHAOS_SEED"
	// envNATSChaosDir keeps the nodes' and the nats-servers' data and logs
	// in this directory instead of a temporary one, for a look afterwards.
	envNATSChaosDir = "EDDY_NATS_CHAOS_DIR"
)

// Bounds and pace of the chaos. The waits are generous: the machine is two
// shared cores, and a fault the cluster does not get over in minutes is a
// finding, not slowness.
const (
	chaosLongFor    = 12 * time.Minute // faults go on this long per topology in the long form
	chaosSettleIn   = 3 * time.Minute  // after a fault, until every partition runs again where assigned
	chaosCommitIn   = 2 * time.Minute  // after NATS is back, until every partition commits again
	chaosNATSLate   = 5 * time.Second  // nodes first, NATS this much later
	chaosPartitions = 4
	chaosBankRate   = 200 // bank events a second
	chaosLineRate   = 100 // lines a second
	chaosCatchUpIn  = 3 * time.Minute
)

// faultKind is one kind of fault the chaos injects.
type faultKind int

const (
	natsKill  faultKind = iota // SIGKILL a nats-server, start it again
	stepDown                   // eddy streams' leaders step down (NATS cluster only)
	nodeKill                   // SIGKILL an eddy node, start it again
	nodePause                  // SIGSTOP an eddy node past gossip detection, then SIGCONT
	nodeLeave                  // SIGTERM an eddy node (a graceful leave), start it again
	faultKinds
)

func (k faultKind) String() string {
	return [...]string{"nats-kill", "step-down", "node-kill", "node-pause", "node-leave"}[k]
}

// chaosMinimum is how many faults of each kind every run injects, in an
// order shuffled by the seed; the long form draws more until chaosLongFor.
var chaosMinimum = [faultKinds]int{natsKill: 3, stepDown: 2, nodeKill: 2, nodePause: 1, nodeLeave: 1}

// chaosWeight is how often the long form draws each kind.
var chaosWeight = [faultKinds]int{natsKill: 3, stepDown: 2, nodeKill: 2, nodePause: 2, nodeLeave: 1}

// TestNATSChaos is eddy against NATS faults, all real processes: three node
// processes run the bank and the word count (4 partitions each, one hot
// replica) on one nats-server, then on a 3-server JetStream cluster with
// streams of 3 replicas, then on one nats-server again with their state in
// PostgreSQL (no replicas). NATS starts 5 s after the nodes. A producer that
// is not eddy's Client publishes JSON events with message ids, retried
// until acknowledged, ~300 a second. Faults mixed by a seeded RNG: a
// nats-server SIGKILLed and restarted (on the cluster one at a time, often
// the leader of an eddy stream), stream leaders stepped down (cluster),
// an eddy node SIGKILLed and restarted, paused past detection, or stopped
// gracefully and restarted; after each, every partition must run again
// where it is assigned. At the end every account, word and running count
// must equal the model of what was acknowledged.
//
// EDDY_NATS_CHAOS=short runs it in a couple of minutes per topology,
// EDDY_NATS_CHAOS=long for chaosLongFor each; EDDY_NATS_CHAOS_SEED=n
// replays a run.
func TestNATSChaos(t *testing.T) {
	form := os.Getenv(envNATSChaos)
	if testing.Short() || form == "" || form == "off" || form == "0" {
		t.Skipf("set %s=short or long to run (starts nats-server and node processes)", envNATSChaos)
	}
	if form != "short" && form != "long" {
		t.Fatalf("%s=%q: want short or long", envNATSChaos, form)
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(envNATSChaosSeed); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("%s: %v", envNATSChaosSeed, err)
		}
	}
	t.Logf("seed %d (replay with %s=%d)", seed, envNATSChaosSeed, seed)
	for _, v := range []struct {
		name     string
		servers  int
		postgres bool // the apps' state in PostgreSQL (a server of the test's)
	}{{"one-server", 1, false}, {"three-servers", 3, false}, {"one-server-postgres", 1, true}} {
		name, servers := v.name, v.servers
		t.Run(name, func(t *testing.T) {
			t.Logf("seed %d (replay with %s=%d)", seed, envNATSChaosSeed, seed)
			var opts []func(*procConfig)
			if v.postgres {
				dsn := pgtest.New(t).DSN("postgres")
				opts = append(opts, func(c *procConfig) {
					c.Replicas = 0
					c.ExtraArgs = append(c.ExtraArgs, "--state-store", "postgres", "--pg-dsn", dsn)
				})
			}
			c := startChaos(t, name, servers, seed, true, opts...)
			var long time.Duration
			if form == "long" {
				long = chaosLongFor
			}
			c.run(c.minimum(), long)
			c.finish()
		})
	}
}

// TestMultiProcessNATSRestart is the headline of the chaos test in the
// default test run: three node processes with the bank (4 partitions, a hot
// replica each) start 5 s before their nats-server process; under load,
// the nats-server is SIGKILLed and restarted twice; every partition runs
// and commits again each time, and the bank's invariants hold exactly.
func TestMultiProcessNATSRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts nats-server and node processes")
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	c := startChaos(t, "", 1, seed, false)
	c.run([]faultKind{natsKill, natsKill}, 0)
	c.finish()
}

// chaos is one run of faults against a procCluster under the producer's
// load, and what it measured.
type chaos struct {
	t         *testing.T
	pc        *procCluster
	ids       []string
	rng       *rand.Rand
	prod      *workload.Producer
	wordcount bool
	ctx       context.Context
	began     time.Time

	faults        [faultKinds]int
	natsBack      []time.Duration // one server: restarted server accepting -> every partition committed
	natsKilled    []time.Duration // cluster: kill -> every partition committed
	natsRestarted []time.Duration // cluster: restart -> every partition committed
	stepDowns     []time.Duration // step-down -> every partition committed
	lateStart     time.Duration   // NATS launched -> every partition running
}

// startChaos starts three node processes, then NATS (servers nats-server
// processes) chaosNATSLate later, waits until every partition runs, and
// starts the producer: the bank and, with wordcount, the word count.
func startChaos(t *testing.T, name string, servers int, seed uint64, wordcount bool, opts ...func(*procConfig)) *chaos {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	dir := t.TempDir()
	if d := os.Getenv(envNATSChaosDir); d != "" {
		if name == "" {
			name = t.Name()
		}
		dir = filepath.Join(d, fmt.Sprintf("%s-%d", name, seed))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Logf("data and logs in %s", dir)
	}
	appList := []string{"bank"}
	if wordcount {
		appList = append(appList, "wordcount")
	}
	cfg := procConfig{Dir: dir, Exe: os.Args[0], Env: []string{"EDDY_TEST_AS_NODE=1"},
		Apps: appList, Partitions: chaosPartitions, Replicas: 1, NATSServers: servers, NATSLater: true, Logf: t.Logf}
	for _, o := range opts {
		o(&cfg)
	}
	pc := newTestProcCluster(t, cfg)
	c := &chaos{t: t, pc: pc, ids: []string{"n1", "n2", "n3"}, rng: rand.New(rand.NewPCG(seed, 3)), wordcount: wordcount, ctx: ctx}

	// The nodes start first and wait for NATS; the delay is the point.
	for _, id := range c.ids {
		if err := pc.start(id, len(c.ids)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(chaosNATSLate)
	launched := time.Now()
	if err := pc.startNATS(ctx); err != nil {
		c.fatalf("NATS did not start: %v", err)
	}
	c.settle(c.ids, fmt.Sprintf("NATS launched %v after the nodes", chaosNATSLate))
	c.lateStart = time.Since(launched)
	t.Logf("late start: NATS (%d servers) launched %v after the nodes; every partition running %v after the launch",
		servers, chaosNATSLate, c.lateStart.Round(time.Millisecond))

	lineRate := 0.0
	if wordcount {
		lineRate = chaosLineRate
	}
	var err error
	if c.prod, err = workload.NewProducer(pc.natsURL, pc.Partitions, seed, chaosBankRate, lineRate); err != nil {
		t.Fatal(err)
	}
	if err := c.prod.Fund(ctx); err != nil {
		c.fatalf("funding: %v", err)
	}
	c.prod.Start(ctx)
	t.Cleanup(func() { _ = c.prod.StopAndWait() })
	c.began = time.Now()
	return c
}

// minimum returns the faults every run injects: chaosMinimum of each kind
// the topology allows (step-downs need a NATS cluster), in an order
// shuffled by the seed.
func (c *chaos) minimum() []faultKind {
	var s []faultKind
	for k := range faultKinds {
		if c.allowed(k) {
			for range chaosMinimum[k] {
				s = append(s, k)
			}
		}
	}
	c.rng.Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
	return s
}

func (c *chaos) allowed(k faultKind) bool { return k != stepDown || c.pc.NATSServers >= 3 }

// draw picks a fault kind the topology allows, by chaosWeight.
func (c *chaos) draw() faultKind {
	total := 0
	for k := range faultKinds {
		if c.allowed(k) {
			total += chaosWeight[k]
		}
	}
	n := c.rng.IntN(total)
	for k := range faultKinds {
		if !c.allowed(k) {
			continue
		}
		if n < chaosWeight[k] {
			return k
		}
		n -= chaosWeight[k]
	}
	panic("unreachable")
}

// run injects the faults of schedule one after the other, 1-3 s of load
// apart, each followed by a wait until the cluster has settled; then, until
// long has passed since the load began, more faults drawn by weight.
func (c *chaos) run(schedule []faultKind, long time.Duration) {
	for i := 0; i < len(schedule) || time.Since(c.began) < long; i++ {
		var k faultKind
		if i < len(schedule) {
			k = schedule[i]
		} else {
			k = c.draw()
		}
		time.Sleep(time.Second + time.Duration(c.rng.IntN(2000))*time.Millisecond)
		start := time.Now()
		switch k {
		case natsKill:
			if c.pc.NATSServers == 1 {
				c.killNATSServer()
			} else {
				c.killNATSMember()
			}
		case stepDown:
			c.stepDownStreams()
		case nodeKill:
			c.killNode()
		case nodePause:
			c.pauseNode()
		case nodeLeave:
			c.leaveNode()
		}
		c.faults[k]++
		c.t.Logf("fault %d (%s) over in %v; %d events published so far", i+1, k, time.Since(start).Round(time.Millisecond), c.prod.Events())
	}
}

// fatalf fails the test now; the cleanup prints the log tails.
func (c *chaos) fatalf(format string, args ...any) {
	c.t.Helper()
	c.t.Fatalf("%s: "+format, append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}

// settle waits until every partition runs where it is assigned on the
// nodes in ids. If they do not, it fails the test with what each
// nats-server says of the changelogs of the partitions that do not run.
func (c *chaos) settle(ids []string, after string) {
	c.t.Helper()
	if _, err := c.pc.waitSettled(c.ctx, ids, chaosSettleIn); err != nil {
		c.t.Logf("NATS's view of the partitions not running:\n%s", c.natsView(ids))
		c.fatalf("after %s: %v", after, err)
	}
}

// natsView asks every running nats-server, over a connection to it alone,
// about the changelog and the input stream of each partition that /v1/cluster
// on ids[0] does not report running: the evidence when one never runs.
func (c *chaos) natsView(ids []string) string {
	ctx, cancel := context.WithTimeout(c.ctx, time.Minute)
	defer cancel()
	st, err := c.pc.clusterStatus(ctx, ids[0])
	if err != nil {
		return fmt.Sprintf("(/v1/cluster on %s: %v)", ids[0], err)
	}
	var b strings.Builder
	for _, p := range st.Partitions {
		if p.State == "running" {
			continue
		}
		fmt.Fprintf(&b, "%s/%d on %s at epoch %d: %s %s\n", p.Type, p.Partition, p.Active, p.Epoch, p.State, p.Err)
		for i := range c.pc.nats.Size() {
			if !c.pc.nats.Running(i) {
				fmt.Fprintf(&b, "  %s: not running\n", c.pc.nats.Name(i))
				continue
			}
			for _, name := range []string{changelog.NewSubjects(p.Type, p.Partition).Stream(), p.Type} {
				fmt.Fprintf(&b, "  %s says of %s: %s\n", c.pc.nats.Name(i), name, streamView(ctx, c.pc.nats.URL(i), name))
			}
		}
	}
	return b.String()
}

// streamView is what the server at url answers about stream: its leader,
// replicas, messages and consumers, or the error.
func streamView(ctx context.Context, url, stream string) string {
	nc, err := nats.Connect(url, nats.NoReconnect(), nats.Timeout(3*time.Second))
	if err != nil {
		return err.Error()
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err.Error()
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := js.Stream(rctx, stream)
	if err != nil {
		return err.Error()
	}
	info := s.CachedInfo()
	out := fmt.Sprintf("created %s, messages %d (%d..%d), consumers %d", info.Created.Format("15:04:05.000"),
		info.State.Msgs, info.State.FirstSeq, info.State.LastSeq, info.State.Consumers)
	if ci := info.Cluster; ci != nil {
		out += ", leader " + ci.Leader
		for _, r := range ci.Replicas {
			out += fmt.Sprintf(", replica %s (current %v, offline %v, active %v ago, lag %d)", r.Name, r.Current, r.Offline, r.Active.Round(time.Millisecond), r.Lag)
		}
	}
	cs := s.ListConsumers(rctx)
	for ci := range cs.Info() {
		out += fmt.Sprintf("; consumer %s (created %s, filter %q, delivered %d, pending %d, waiting %d)", ci.Name, ci.Created.Format("15:04:05.000"),
			ci.Config.FilterSubject, ci.Delivered.Stream, ci.NumPending, ci.NumWaiting)
	}
	if err := cs.Err(); err != nil {
		out += "; consumers: " + err.Error()
	}
	return out
}

// committed waits until every partition commits after since and returns
// how long after since that was, logging which partition was the last.
func (c *chaos) committed(since time.Time, after string) time.Duration {
	c.t.Helper()
	d, slowest, err := c.pc.waitCommitted(c.ctx, c.ids, since, chaosCommitIn)
	if err != nil {
		c.fatalf("after %s: %v", after, err)
	}
	c.t.Logf("after %s: the last partition to commit again was %s, %v after %s", after, slowest, d.Round(time.Millisecond), since.Format("15:04:05.000"))
	return d
}

// waitNATSReady waits until every running nats-server is ready (a restarted
// member has caught up), so that the next fault does not take a stream's
// quorum with it.
func (c *chaos) waitNATSReady(after string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.ctx, natsReadyTimeout)
	defer cancel()
	if err := c.pc.nats.WaitReady(ctx); err != nil {
		c.fatalf("after %s: NATS not ready: %v", after, err)
	}
}

// killNATSServer SIGKILLs the one nats-server, keeps it down 0.5-3 s and
// starts it again, then measures from its accepting connections until
// every partition has committed again.
func (c *chaos) killNATSServer() {
	what := "SIGKILL of the nats-server"
	if err := c.pc.nats.Kill(0); err != nil {
		c.fatalf("%s: %v", what, err)
	}
	time.Sleep(500*time.Millisecond + time.Duration(c.rng.IntN(2500))*time.Millisecond)
	if err := c.pc.nats.Start(0); err != nil {
		c.fatalf("restart of the nats-server: %v", err)
	}
	back := time.Now()
	d := c.committed(back, what)
	c.natsBack = append(c.natsBack, d)
	c.t.Logf("%s: every partition committed %v after it accepted connections again", what, d.Round(time.Millisecond))
	c.settle(c.ids, what)
}

// eddyStreams are the streams eddy made: the input streams and the
// changelogs of every partition.
func (c *chaos) eddyStreams() []string {
	var s []string
	for _, typ := range c.pc.types {
		s = append(s, typ)
		for p := range c.pc.Partitions {
			s = append(s, changelog.NewSubjects(typ, p).Stream())
		}
	}
	return s
}

// streamLeader is the server leading stream, "" if it cannot be told now.
func (c *chaos) streamLeader(stream string) string {
	js, err := jetstream.New(c.pc.nc)
	if err != nil {
		return ""
	}
	leader, _ := natsproc.StreamLeader(c.ctx, js, stream)
	return leader
}

// killNATSMember SIGKILLs one server of the NATS cluster (half the time the
// leader of a random eddy stream), measures until every partition commits
// again, keeps it down 0-3 s more, starts it again and measures again from
// the restart.
func (c *chaos) killNATSMember() {
	i := c.rng.IntN(c.pc.nats.Size())
	why := "chosen at random"
	if c.rng.IntN(2) == 0 {
		streams := c.eddyStreams()
		stream := streams[c.rng.IntN(len(streams))]
		if j, err := c.pc.nats.Index(c.streamLeader(stream)); err == nil {
			i, why = j, "leader of "+stream
		}
	}
	name := c.pc.nats.Name(i)
	what := fmt.Sprintf("SIGKILL of nats-server %s (%s)", name, why)
	killed := time.Now()
	if err := c.pc.nats.Kill(i); err != nil {
		c.fatalf("%s: %v", what, err)
	}
	d := c.committed(killed, what)
	c.natsKilled = append(c.natsKilled, d)
	time.Sleep(time.Duration(c.rng.IntN(3000)) * time.Millisecond)
	if err := c.pc.nats.Start(i); err != nil {
		c.fatalf("restart of nats-server %s: %v", name, err)
	}
	restarted := time.Now()
	r := c.committed(restarted, "restart of "+name)
	c.natsRestarted = append(c.natsRestarted, r)
	c.t.Logf("%s: every partition committed %v after the kill, %v after the restart", what, d.Round(time.Millisecond), r.Round(time.Millisecond))
	c.waitNATSReady("restart of " + name)
	c.settle(c.ids, what)
}

// stepDownStreams has the leaders of 2-4 random eddy streams (changelogs
// and input streams) step down under load.
func (c *chaos) stepDownStreams() {
	streams := c.eddyStreams()
	c.rng.Shuffle(len(streams), func(i, j int) { streams[i], streams[j] = streams[j], streams[i] })
	streams = streams[:2+c.rng.IntN(3)]
	began := time.Now()
	var moved []string
	for _, s := range streams {
		ctx, cancel := context.WithTimeout(c.ctx, time.Minute)
		leader, err := natsproc.StepDownStream(ctx, c.pc.nc, s)
		cancel()
		if err != nil {
			c.fatalf("step-down of %s: %v", s, err)
		}
		moved = append(moved, s+" -> "+leader)
	}
	d := c.committed(began, "step-downs")
	c.stepDowns = append(c.stepDowns, d)
	c.t.Logf("step-downs %s: every partition committed %v after the first", strings.Join(moved, ", "), d.Round(time.Millisecond))
	c.settle(c.ids, "step-downs")
}

// victim picks a node at random, the Raft leader included.
func (c *chaos) victim() string { return c.ids[c.rng.IntN(len(c.ids))] }

// killNode SIGKILLs a node, waits until its partitions run on the others,
// and starts it again.
func (c *chaos) killNode() {
	v := c.victim()
	if err := c.pc.kill(v); err != nil {
		c.fatalf("SIGKILL of %s: %v", v, err)
	}
	c.settle(without(c.ids, v), "SIGKILL of "+v)
	if err := c.pc.start(v, 0); err != nil {
		c.fatalf("restart of %s: %v", v, err)
	}
	c.settle(c.ids, "restart of "+v)
}

// pauseNode SIGSTOPs a node for 2-4 s, well past gossip's ~1 s detection
// (its partitions move), and SIGCONTs it: it finds itself fenced and rejoins.
func (c *chaos) pauseNode() {
	v := c.victim()
	if err := c.pc.signal(v, syscall.SIGSTOP); err != nil {
		c.fatalf("SIGSTOP of %s: %v", v, err)
	}
	time.Sleep(2*time.Second + time.Duration(c.rng.IntN(2000))*time.Millisecond)
	if err := c.pc.signal(v, syscall.SIGCONT); err != nil {
		c.fatalf("SIGCONT of %s: %v", v, err)
	}
	c.settle(c.ids, "SIGSTOP and SIGCONT of "+v)
}

// leaveNode SIGTERMs a node (it hands its partitions over and leaves), and
// starts it again.
func (c *chaos) leaveNode() {
	v := c.victim()
	if err := c.pc.stop(v, time.Minute); err != nil {
		c.fatalf("graceful leave of %s: %v", v, err)
	}
	c.settle(without(c.ids, v), "graceful leave of "+v)
	if err := c.pc.start(v, 0); err != nil {
		c.fatalf("restart of %s: %v", v, err)
	}
	c.settle(c.ids, "restart of "+v)
}

// finish stops the producer, waits until every partition has caught up,
// checks the state against the model and logs the figures.
func (c *chaos) finish() {
	t := c.t
	loadFor := time.Since(c.began)
	if err := c.prod.StopAndWait(); err != nil {
		c.fatalf("producer: %v", err)
	}
	m := c.prod.Snapshot()
	c.settle(c.ids, "the last fault")
	st := workload.WaitCaughtUp(c.ctx, t, c.pc.stateGetter(c.ids), c.prod, m, c.wordcount, chaosCatchUpIn)
	js, err := jetstream.New(c.pc.nc)
	if err != nil {
		t.Fatal(err)
	}
	violations := workload.Check(c.ctx, t, js, st, m, c.wordcount)

	var faults []string
	for k := range faultKinds {
		if c.faults[k] > 0 {
			faults = append(faults, fmt.Sprintf("%s %d", k, c.faults[k]))
		}
	}
	t.Logf("faults: %s", strings.Join(faults, ", "))
	t.Logf("published in %v: %d events, %.0f/s (%d deposits, %d transfers, %d lines of %d words); %d publish attempts retried, %d of them stored before (duplicate acks); slowest ack %v",
		loadFor.Round(time.Second), m.Events(), float64(m.Events())/loadFor.Seconds(), m.Deposits, m.Transfers, m.Lines, m.WordsSent,
		c.prod.Retried(), c.prod.Duplicates(), c.prod.Slowest().Round(time.Millisecond))
	t.Logf("violations: %d", violations)
	if len(c.natsBack) > 0 {
		t.Logf("nats-server restarted, accepting connections -> every partition committed: p50 %v, p99 %v over %d kills %v",
			pct(c.natsBack, 50), pct(c.natsBack, 99), len(c.natsBack), rounded(c.natsBack))
	}
	if len(c.natsKilled) > 0 {
		t.Logf("cluster member killed -> every partition committed: p50 %v, p99 %v over %d kills %v",
			pct(c.natsKilled, 50), pct(c.natsKilled, 99), len(c.natsKilled), rounded(c.natsKilled))
		t.Logf("cluster member restarted -> every partition committed: p50 %v, p99 %v %v",
			pct(c.natsRestarted, 50), pct(c.natsRestarted, 99), rounded(c.natsRestarted))
	}
	if len(c.stepDowns) > 0 {
		t.Logf("step-downs -> every partition committed: p50 %v, p99 %v %v", pct(c.stepDowns, 50), pct(c.stepDowns, 99), rounded(c.stepDowns))
	}
	t.Logf("late start: every partition running %v after NATS launched (%v after the nodes)", c.lateStart.Round(time.Millisecond), chaosNATSLate)
}

func pct(ds []time.Duration, p int) time.Duration { return percentile(ds, p).Round(time.Millisecond) }

func rounded(ds []time.Duration) []time.Duration {
	out := slices.Clone(ds)
	for i := range out {
		out[i] = out[i].Round(time.Millisecond)
	}
	return out
}
