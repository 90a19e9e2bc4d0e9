package cluster

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/eddyrt/eddy/internal/testkit"
)

// clusterTestType is the actor type of the scenarios: 8 partitions, no hot
// replicas (balance moves still warm the target up as a replica first).
var clusterTestType = ActorType{Name: "accounts", Partitions: 8}

// clusterTestConfig is a Config for a node on loopback with free ports, a
// temp dir and a short bootstrap settle.
func clusterTestConfig(t testing.TB, id string, seeds ...string) Config {
	cfg := DefaultConfig()
	cfg.NodeID = id
	cfg.Zone = ""
	cfg.DataDir = t.TempDir()
	cfg.GossipAddr = "127.0.0.1:0"
	cfg.RaftAddr = "127.0.0.1:0"
	cfg.Join = seeds
	cfg.BootstrapExpect = 3
	cfg.BootstrapSettle = 300 * time.Millisecond
	cfg.Logger = gossipTestLogger(t)
	return cfg
}

// clusterTestEnv is a set of in-process nodes, and a stand-in for the replica
// actors: it reports every replica warm as soon as it is placed, through
// the leader, so that warm-up moves complete.
type clusterTestEnv struct {
	t     testing.TB
	mu    sync.Mutex
	nodes []*Cluster
	down  map[string]bool
	// mutate, when set, adjusts the config of every node started.
	mutate func(*Config)
}

func clusterTestNewEnv(t testing.TB) *clusterTestEnv {
	e := &clusterTestEnv{t: t, down: make(map[string]bool)}
	stop := make(chan struct{})
	done := make(chan struct{})
	go e.reportWarm(stop, done)
	t.Cleanup(func() { // runs before the nodes' cleanups, registered later
		close(stop)
		<-done
	})
	return e
}

// start starts a node that joins through the first node.
func (e *clusterTestEnv) start(id string) *Cluster {
	e.t.Helper()
	var seeds []string
	if len(e.nodes) > 0 {
		seeds = []string{e.nodes[0].GossipAddr()}
	}
	cfg := clusterTestConfig(e.t, id, seeds...)
	if e.mutate != nil {
		e.mutate(&cfg)
	}
	c, err := Start(cfg)
	if err != nil {
		e.t.Fatalf("start %s: %v", id, err)
	}
	e.t.Cleanup(func() { c.Shutdown() })
	e.mu.Lock()
	e.nodes = append(e.nodes, c)
	e.mu.Unlock()
	return c
}

// form starts n1..n3 with BootstrapExpect 3, registers the actor type on
// each and waits until the assignment settles.
func (e *clusterTestEnv) form() {
	e.t.Helper()
	for i := 1; i <= 3; i++ {
		e.start(fmt.Sprintf("n%d", i))
	}
	e.registerAll()
	e.settled(15*time.Second, "first placement")
}

// registerAll registers the actor type on every node, as every node does at
// start, waiting for each.
func (e *clusterTestEnv) registerAll() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	errs := make(chan error, len(e.nodes))
	for _, c := range e.alive() {
		go func() { errs <- c.RegisterType(ctx, clusterTestType) }()
	}
	for range e.alive() {
		if err := <-errs; err != nil {
			e.t.Fatalf("register type: %v", err)
		}
	}
}

// kill stops c like a crash: no leave.
func (e *clusterTestEnv) kill(c *Cluster) {
	e.mu.Lock()
	e.down[c.ID()] = true
	e.mu.Unlock()
	c.Shutdown()
}

func (e *clusterTestEnv) markDown(c *Cluster) {
	e.mu.Lock()
	e.down[c.ID()] = true
	e.mu.Unlock()
}

// alive lists the nodes the test has not stopped.
func (e *clusterTestEnv) alive() []*Cluster {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []*Cluster
	for _, c := range e.nodes {
		if !e.down[c.ID()] {
			out = append(out, c)
		}
	}
	return out
}

// leader waits until one alive node leads and every alive node follows it.
func (e *clusterTestEnv) leader(timeout time.Duration) *Cluster {
	e.t.Helper()
	var leader *Cluster
	testkit.WaitFor(e.t, timeout, "one leader that every alive node follows", func() bool {
		leader = nil
		nodes := e.alive()
		for _, c := range nodes {
			if c.IsLeader() {
				leader = c
			}
		}
		if leader == nil {
			return false
		}
		for _, c := range nodes {
			if id, _ := c.Leader(); id != leader.ID() {
				return false
			}
		}
		return true
	})
	return leader
}

// reportWarm stands in for the replica actors: every 20 ms it reports each
// replica whose lag is unknown as caught up, through the leader.
func (e *clusterTestEnv) reportWarm(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		for _, c := range e.alive() {
			if !c.IsLeader() {
				continue
			}
			lags := make(map[string][]LagReport)
			for _, p := range c.Assignment().Partitions() {
				for _, r := range p.Replicas {
					if !r.LagKnown() {
						lags[r.Node] = append(lags[r.Node], LagReport{Type: p.Type, Partition: p.Partition})
					}
				}
			}
			for node, ls := range lags {
				c.apply(ReportLag{Node: node, At: time.Now(), Lags: ls}) // a failure is retried next tick
			}
		}
	}
}

// settled waits until every alive node holds the same assignment, in which
// every partition has exactly one active, on an alive node, no move is in
// progress, no partition's node holds two more actives than an alive node
// the partition does not avoid (so, with none avoided, no alive node holds
// more than ceil(P/N) actives), and the assignor has nothing left to do. It
// returns that assignment.
func (e *clusterTestEnv) settled(timeout time.Duration, what string) Model {
	e.t.Helper()
	var m Model
	var why string
	deadline := time.Now().Add(timeout)
	for {
		m, why = e.check()
		if why == "" {
			return m
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: not settled after %s: %s", what, timeout, why)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (e *clusterTestEnv) check() (Model, string) {
	nodes := e.alive()
	alive := make(map[string]bool)
	for _, c := range nodes {
		alive[c.ID()] = true
	}
	m := nodes[0].Assignment()
	t, ok := m.ActorType(clusterTestType.Name)
	if !ok || t != clusterTestType {
		return m, "actor type not registered"
	}
	var aliveInModel []string
	for _, n := range m.AliveNodes() {
		aliveInModel = append(aliveInModel, n.ID)
	}
	if len(aliveInModel) != len(alive) {
		return m, fmt.Sprintf("alive nodes in the assignment %v, want %d", aliveInModel, len(alive))
	}
	for _, id := range aliveInModel {
		if !alive[id] {
			return m, fmt.Sprintf("assignment holds %s alive", id)
		}
	}
	load := make(map[string]int)
	for _, p := range m.Partitions() {
		switch {
		case !alive[p.Active]:
			return m, fmt.Sprintf("%s active on %q", p, p.Active)
		case p.MovingTo != "":
			return m, fmt.Sprintf("%s moving to %s", p, p.MovingTo)
		}
		load[p.Active]++
	}
	// Balanced: no partition's node holds two more actives than an alive
	// node the partition does not avoid; with none avoided, no node holds
	// more than ceil(P/N).
	aliveNodes := make(map[string]NodeInfo)
	for _, n := range m.AliveNodes() {
		aliveNodes[n.ID] = n
	}
	avoiding := false
	for _, p := range m.Partitions() {
		avoid := avoidedBy(p, aliveNodes)
		avoiding = avoiding || len(avoid) > 0
		for dst := range aliveNodes {
			if !avoid[dst] && load[p.Active]-load[dst] > 1 {
				return m, fmt.Sprintf("%s on %s, which holds %d actives, could move to %s, which holds %d", p, p.Active, load[p.Active], dst, load[dst])
			}
		}
	}
	ceil := (clusterTestType.Partitions + len(alive) - 1) / len(alive)
	for id, n := range load {
		if n > ceil && !avoiding {
			return m, fmt.Sprintf("%s holds %d actives, more than %d", id, n, ceil)
		}
	}
	if ch := Plan(m, DefaultAssignorConfig()); len(ch) > 0 {
		return m, fmt.Sprintf("assignor has %d changes left, first %s", len(ch), ch[0])
	}
	for _, c := range nodes[1:] {
		o := c.Assignment()
		if !slices.EqualFunc(o.Partitions(), m.Partitions(), func(a, b PartitionAssignment) bool {
			return a.Active == b.Active && a.Epoch == b.Epoch
		}) {
			return m, fmt.Sprintf("%s holds another assignment than %s", c.ID(), nodes[0].ID())
		}
	}
	return m, ""
}

func clusterTestActives(m Model) map[string]int {
	load := make(map[string]int)
	for _, p := range m.Partitions() {
		load[p.Active]++
	}
	return load
}

func TestClusterJoinRebalances(t *testing.T) {
	e := clusterTestNewEnv(t)
	e.form()
	before := e.settled(time.Second, "formed")
	t.Logf("3 nodes: actives %v", clusterTestActives(before))

	start := time.Now()
	n4 := e.start("n4")
	e.registerAll()
	after := e.settled(20*time.Second, "after n4 joined")
	t.Logf("rebalance on join took %s (join, raft add, warm-up, hand over); actives %v",
		time.Since(start).Round(time.Millisecond), clusterTestActives(after))
	if got := len(after.ActiveOn(n4.ID())); got != 2 {
		t.Fatalf("n4 holds %d actives, want 2 of 8 over 4 nodes", got)
	}
	for _, p := range after.Partitions() {
		old, _ := before.Partition(p.Type, p.Partition)
		if p.Active == old.Active && p.Epoch != old.Epoch {
			t.Errorf("%s stayed on %s but its epoch changed %d -> %d", p, p.Active, old.Epoch, p.Epoch)
		}
		if p.Active != old.Active && p.Epoch <= old.Epoch {
			t.Errorf("%s moved %s -> %s without an epoch bump (%d -> %d)", p, old.Active, p.Active, old.Epoch, p.Epoch)
		}
	}
}

func TestClusterCrashReassigns(t *testing.T) {
	e := clusterTestNewEnv(t)
	e.mutate = func(c *Config) { c.DeadGrace = time.Second }
	e.form()
	leader := e.leader(5 * time.Second)
	var victim *Cluster
	for _, c := range e.alive() {
		if c != leader {
			victim = c
			break
		}
	}
	before := victim.Assignment()
	lost := before.ActiveOn(victim.ID())
	if len(lost) == 0 {
		t.Fatalf("%s holds no active", victim.ID())
	}

	start := time.Now()
	e.kill(victim)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := leader.Wait(ctx, func(m Model) bool {
		for _, old := range lost {
			p, _ := m.Partition(old.Type, old.Partition)
			if p.Active == victim.ID() || p.Epoch <= old.Epoch {
				return false
			}
		}
		return true
	})
	if err != nil {
		t.Fatalf("partitions of crashed %s not reassigned: %v", victim.ID(), err)
	}
	t.Logf("crash of %s to its %d partitions active elsewhere: %s", victim.ID(), len(lost), time.Since(start).Round(time.Millisecond))
	after := e.settled(5*time.Second, "after the crash")
	if n, _ := after.Node(victim.ID()); n.State != NodeDead {
		t.Errorf("%s is %s in the assignment, want dead", victim.ID(), n.State)
	}
	for _, p := range before.Partitions() {
		if p.Active == victim.ID() {
			continue
		}
		q, _ := after.Partition(p.Type, p.Partition)
		if q.Active != p.Active || q.Epoch != p.Epoch {
			t.Errorf("%s moved %s/%d -> %s/%d though its node is alive", p, p.Active, p.Epoch, q.Active, q.Epoch)
		}
	}
	// Past DeadGrace the leader forgets the dead node, which holds nothing now.
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.leader(5*time.Second).Wait(ctx, func(m Model) bool {
		_, known := m.Node(victim.ID())
		return !known
	}); err != nil {
		t.Fatalf("dead %s not forgotten after DeadGrace: %v", victim.ID(), err)
	}
}

func TestClusterLeaderLossKeepsAssignment(t *testing.T) {
	e := clusterTestNewEnv(t)
	e.form()
	old := e.leader(5 * time.Second)
	before := e.settled(time.Second, "formed")

	start := time.Now()
	e.kill(old)
	leader := e.leader(10 * time.Second)
	elected := time.Since(start)
	after := e.settled(10*time.Second, "after leader loss")
	t.Logf("leader %s killed: %s leads after %s, assignment settled after %s",
		old.ID(), leader.ID(), elected.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if leader == old {
		t.Fatal("the killed node still leads")
	}
	for _, p := range before.Partitions() {
		q, _ := after.Partition(p.Type, p.Partition)
		if p.Active == old.ID() {
			if q.Epoch <= p.Epoch {
				t.Errorf("%s moved off the dead leader without an epoch bump", p)
			}
			continue
		}
		if q.Active != p.Active || q.Epoch != p.Epoch {
			t.Errorf("%s changed %s/%d -> %s/%d across the leader change", p, p.Active, p.Epoch, q.Active, q.Epoch)
		}
	}
}

func TestClusterGracefulLeaveMovesActives(t *testing.T) {
	e := clusterTestNewEnv(t)
	e.form()
	leaver := e.leader(5 * time.Second) // the hardest case: the assignor itself leaves
	before := e.settled(time.Second, "formed")
	moved := before.ActiveOn(leaver.ID())

	start := time.Now()
	e.markDown(leaver)
	if err := leaver.Leave(10 * time.Second); err != nil {
		t.Fatalf("leave: %v", err)
	}
	t.Logf("leave of %s (the leader) moved its %d actives and returned after %s", leaver.ID(), len(moved), time.Since(start).Round(time.Millisecond))
	after := e.settled(10*time.Second, "after the leave")
	if n, _ := after.Node(leaver.ID()); n.State != NodeLeft {
		t.Errorf("%s is %s in the assignment, want left", leaver.ID(), n.State)
	}
	for _, p := range moved {
		q, _ := after.Partition(p.Type, p.Partition)
		if q.Epoch <= p.Epoch {
			t.Errorf("%s moved to %s without an epoch bump", p, q.Active)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	cfg := DefaultConfig()
	cfg.NodeID = "n1"
	if err := cfg.Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	for name, mutate := range map[string]func(*Config){
		"no node id":           func(c *Config) { c.NodeID = "" },
		"bad gossip addr":      func(c *Config) { c.GossipAddr = "127.0.0.1" },
		"bootstrap and expect": func(c *Config) { c.Bootstrap, c.BootstrapExpect = true, 3 },
		"even voters":          func(c *Config) { c.MaxVoters = 4 },
		"no data dir":          func(c *Config) { c.DataDir = "" },
		"assignor":             func(c *Config) { c.Assignor.MaxConcurrentMoves = 0 },
	} {
		c := cfg
		mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate accepted it", name)
		}
	}
}

// restart shuts c down like a crash and starts its node again at once: same
// id, data dir and ports, joining through another alive node.
func (e *clusterTestEnv) restart(c *Cluster) *Cluster {
	e.t.Helper()
	cfg := c.cfg
	cfg.GossipAddr, cfg.RaftAddr = c.GossipAddr(), c.RaftAddr()
	cfg.Join = nil
	for _, o := range e.alive() {
		if o != c {
			cfg.Join = []string{o.GossipAddr()}
			break
		}
	}
	c.Shutdown()
	var n *Cluster
	var err error
	for range 50 { // the ports may take a moment to be free again
		if n, err = Start(cfg); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		e.t.Fatalf("restart %s: %v", c.ID(), err)
	}
	e.t.Cleanup(func() { n.Shutdown() })
	e.mu.Lock()
	e.nodes[slices.Index(e.nodes, c)] = n
	e.mu.Unlock()
	return n
}

func TestClusterQuickRestartNewEpochs(t *testing.T) {
	e := clusterTestNewEnv(t)
	// The slower failure detector keeps the restart well inside the time
	// gossip takes to declare a node dead, even under the race detector.
	e.mutate = func(c *Config) { c.GossipProfile = ProfileLAN }
	e.form()
	leader := e.leader(5 * time.Second)
	var victim *Cluster
	for _, c := range e.alive() {
		if c != leader {
			victim = c
			break
		}
	}
	before := e.settled(time.Second, "formed")
	mine := before.ActiveOn(victim.ID())
	if len(mine) == 0 {
		t.Fatalf("%s holds no active", victim.ID())
	}
	oldInc := victim.Incarnation()
	if got := before.ActiveOnIncarnation(victim.ID(), oldInc); len(got) != len(mine) {
		t.Fatalf("%s's incarnation %d is active on %d partitions, want %d", victim.ID(), oldInc, len(got), len(mine))
	}

	start := time.Now()
	restarted := e.restart(victim)
	newInc := restarted.Incarnation()
	if newInc <= oldInc {
		t.Fatalf("incarnation %d after a restart, was %d", newInc, oldInc)
	}
	// A restart slower than the leader's probe (its Raft port refused while
	// the process was down) is a crash to the assignor: some or all of the
	// partitions move to other nodes at new epochs instead. Both are right.
	replaced := func(m Model) bool {
		for _, p := range mine {
			q, _ := m.Partition(p.Type, p.Partition)
			n, ok := m.Node(q.Active)
			if !ok || !n.Alive() || q.Epoch <= p.Epoch || q.Active == victim.ID() && q.ActiveIncarnation != newInc {
				return false
			}
		}
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := leader.Wait(ctx, replaced); err != nil {
		t.Fatalf("partitions of restarted %s not assigned again at new epochs: %v", victim.ID(), err)
	}
	after := e.settled(5*time.Second, "after the restart")
	if n, _ := after.Node(victim.ID()); !n.Alive() || n.Incarnation != newInc {
		t.Fatalf("%s in the assignment: %+v, want alive at incarnation %d", victim.ID(), n, newInc)
	}
	if !replaced(after) {
		t.Fatalf("partitions of restarted %s lost their new epochs", victim.ID())
	}
	if got := len(after.ActiveOnIncarnation(victim.ID(), newInc)); got != len(mine) {
		t.Logf("the restart of %s took longer than the leader's probe: %d of its %d partitions moved to other nodes, at new epochs (%s)",
			victim.ID(), len(mine)-got, len(mine), time.Since(start).Round(time.Millisecond))
		return
	}
	t.Logf("restart of %s to new epochs for its %d partitions: %s", victim.ID(), len(mine), time.Since(start).Round(time.Millisecond))
	for _, p := range before.Partitions() {
		q, _ := after.Partition(p.Type, p.Partition)
		want := p.Epoch
		if p.Active == victim.ID() {
			want++
			if q.ActiveIncarnation != newInc {
				t.Errorf("%s: assigned to incarnation %d, want %d", q, q.ActiveIncarnation, newInc)
			}
		}
		if q.Active != p.Active || q.Epoch != want {
			t.Errorf("%s: %s at epoch %d -> %s at epoch %d, want %s at epoch %d", p, p.Active, p.Epoch, q.Active, q.Epoch, p.Active, want)
		}
	}
	// The restarted node follows the assignment again.
	if _, err := restarted.Wait(ctx, func(m Model) bool {
		return len(m.ActiveOnIncarnation(victim.ID(), newInc)) == len(mine)
	}); err != nil {
		t.Fatalf("restarted %s does not see its new epochs: %v", victim.ID(), err)
	}
}
