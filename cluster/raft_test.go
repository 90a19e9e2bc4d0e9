package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/eddyrt/eddy/internal/testkit"
)

// raftTestFSM is a counter: a command is a big-endian int64 to add, the
// response the new total. The command "fail" makes Apply return an error.
type raftTestFSM struct {
	mu      sync.Mutex
	total   int64
	applied int
}

var errRaftTestFail = errors.New("raft test FSM: asked to fail")

func (f *raftTestFSM) Apply(l *raft.Log) any {
	if string(l.Data) == "fail" {
		return errRaftTestFail
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.total += int64(binary.BigEndian.Uint64(l.Data))
	f.applied++
	return f.total
}

func (f *raftTestFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return raftTestSnapshot(f.total), nil
}

func (f *raftTestFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var b [8]byte
	if _, err := io.ReadFull(rc, b[:]); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.total = int64(binary.BigEndian.Uint64(b[:]))
	return nil
}

func (f *raftTestFSM) value() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.total
}

type raftTestSnapshot int64

func (s raftTestSnapshot) Persist(sink raft.SnapshotSink) error {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(s))
	if _, err := sink.Write(b[:]); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (raftTestSnapshot) Release() {}

func raftTestCmd(delta int64) []byte {
	return binary.BigEndian.AppendUint64(nil, uint64(delta))
}

// raftTestNode is one node: gossip, Raft and a counter FSM, with a data dir
// and ports that survive a restart.
type raftTestNode struct {
	id         string
	dir        string
	gossipPort int
	raftAddr   string
	cfg        RaftConfig
	seeds      []string

	g   *Gossip
	r   *Raft
	fsm *raftTestFSM
}

type raftTestCluster struct {
	t     testing.TB
	nodes []*raftTestNode
}

func raftTestNewCluster(t testing.TB) *raftTestCluster {
	return &raftTestCluster{t: t}
}

// raftTestConfig is a RaftConfig for tests: loopback, a free port, a temp
// dir, a short bootstrap settle and a long grace (tests that need another
// set it).
func raftTestConfig(t testing.TB, id string) RaftConfig {
	cfg := DefaultRaftConfig()
	cfg.NodeID = id
	cfg.BindAddr = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.BootstrapSettle = 300 * time.Millisecond
	cfg.DeadGrace = 30 * time.Second
	cfg.Logger = gossipTestLogger(t)
	return cfg
}

// add starts a new node whose gossip joins the first node of the cluster.
func (c *raftTestCluster) add(id string, mutate func(*RaftConfig)) *raftTestNode {
	c.t.Helper()
	n := &raftTestNode{id: id, cfg: raftTestConfig(c.t, id)}
	if mutate != nil {
		mutate(&n.cfg)
	}
	if len(c.nodes) > 0 {
		n.seeds = []string{c.nodes[0].g.Addr()}
	}
	c.start(n)
	c.nodes = append(c.nodes, n)
	return n
}

// start (re)starts n's gossip and Raft with its dir and, on a restart, its
// ports.
func (c *raftTestCluster) start(n *raftTestNode) {
	c.t.Helper()
	gcfg := gossipTestConfig(c.t, n.id, n.seeds...)
	gcfg.BindPort = n.gossipPort
	n.g = gossipTestStart(c.t, gcfg)
	_, port, _ := net.SplitHostPort(n.g.Addr())
	n.gossipPort, _ = strconv.Atoi(port)
	rcfg := n.cfg
	if n.raftAddr != "" {
		rcfg.BindAddr = n.raftAddr
	}
	n.fsm = &raftTestFSM{}
	r, err := StartRaft(rcfg, n.fsm, n.g)
	if err != nil {
		c.t.Fatalf("start raft %s: %v", n.id, err)
	}
	n.r = r
	n.raftAddr = r.Addr()
	c.t.Cleanup(func() { r.Shutdown() })
}

// kill stops n like a crash: no Leave.
func (n *raftTestNode) kill() {
	n.r.Shutdown()
	n.g.Shutdown()
}

// restart brings a killed node back with the same data dir and ports.
func (c *raftTestCluster) restart(n *raftTestNode) {
	c.t.Helper()
	n.seeds = nil
	for _, o := range c.nodes {
		if o != n && o.r != nil && !o.g.isClosed() {
			n.seeds = append(n.seeds, o.g.Addr())
		}
	}
	c.start(n)
}

// leader waits until exactly one of nodes leads and the others follow it.
func (c *raftTestCluster) leader(timeout time.Duration, nodes ...*raftTestNode) *raftTestNode {
	c.t.Helper()
	var leader *raftTestNode
	testkit.WaitFor(c.t, timeout, "one raft leader", func() bool {
		leader = nil
		for _, n := range nodes {
			if n.r.IsLeader() {
				if leader != nil {
					return false
				}
				leader = n
			}
		}
		if leader == nil {
			return false
		}
		for _, n := range nodes {
			if id, _ := n.r.Leader(); id != leader.id {
				return false
			}
		}
		return true
	})
	return leader
}

func (c *raftTestCluster) apply(leader *raftTestNode, delta int64) int64 {
	c.t.Helper()
	resp, err := leader.r.Apply(raftTestCmd(delta), 5*time.Second)
	if err != nil {
		c.t.Fatalf("apply on %s: %v", leader.id, err)
	}
	return resp.(int64)
}

func (c *raftTestCluster) waitValue(want int64, nodes ...*raftTestNode) {
	c.t.Helper()
	for _, n := range nodes {
		testkit.WaitFor(c.t, 5*time.Second, fmt.Sprintf("%s's FSM to reach %d", n.id, want), func() bool {
			return n.fsm.value() == want
		})
	}
}

// waitServers waits until n's Raft configuration is want, written as
// "id:voter" or "id:nonvoter", sorted by id.
func (c *raftTestCluster) waitServers(n *raftTestNode, timeout time.Duration, want ...string) {
	c.t.Helper()
	sort.Strings(want)
	var got []string
	testkit.WaitFor(c.t, timeout, fmt.Sprintf("%s's raft servers to be %v", n.id, want), func() bool {
		got = raftTestServers(c.t, n)
		return slices.Equal(got, want)
	})
}

func raftTestServers(t testing.TB, n *raftTestNode) []string {
	servers, err := n.r.Servers()
	if err != nil {
		t.Fatalf("servers of %s: %v", n.id, err)
	}
	var out []string
	for _, s := range servers {
		out = append(out, s.ID+":"+strings.ToLower(s.Suffrage.String()))
	}
	return out
}

// formThree starts n1, n2, n3 with BootstrapExpect 3 and waits for a leader.
func (c *raftTestCluster) formThree(mutate func(*RaftConfig)) (leader *raftTestNode, all []*raftTestNode) {
	c.t.Helper()
	for _, id := range []string{"n1", "n2", "n3"} {
		c.add(id, func(cfg *RaftConfig) {
			cfg.BootstrapExpect = 3
			if mutate != nil {
				mutate(cfg)
			}
		})
	}
	all = slices.Clone(c.nodes)
	leader = c.leader(10*time.Second, all...)
	c.waitServers(leader, 5*time.Second, "n1:voter", "n2:voter", "n3:voter")
	return leader, all
}

func raftTestFollowers(leader *raftTestNode, nodes []*raftTestNode) []*raftTestNode {
	var out []*raftTestNode
	for _, n := range nodes {
		if n != leader {
			out = append(out, n)
		}
	}
	return out
}

func TestRaftBootstrapExpectFormsOneCluster(t *testing.T) {
	c := raftTestNewCluster(t)
	start := time.Now()
	// raft's own timings: the test needs one leader throughout, and the
	// tuned 300 ms lets a busy machine (the race detector, other packages'
	// tests) lose a leader in the middle of its applies.
	leader, all := c.formThree(func(cfg *RaftConfig) {
		cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = time.Second, time.Second, 500*time.Millisecond
	})
	t.Logf("3 nodes formed a cluster with leader %s in %s", leader.id, time.Since(start).Round(time.Millisecond))
	for _, n := range all {
		c.waitServers(n, 3*time.Second, "n1:voter", "n2:voter", "n3:voter")
		if n.r.Term() != leader.r.Term() {
			t.Fatalf("%s is in term %d, the leader in %d", n.id, n.r.Term(), leader.r.Term())
		}
		testkit.WaitFor(t, 3*time.Second, n.id+" to gossip HasRaftState", func() bool {
			m, _ := gossipTestMember(leader.g, n.id)
			return m.Meta.HasRaftState && m.Meta.RaftAddr == n.r.Addr()
		})
	}

	var want int64
	for i := int64(1); i <= 10; i++ {
		want += i
		if got := c.apply(leader, i); got != want {
			t.Fatalf("apply returned %d, want %d", got, want)
		}
	}
	c.waitValue(want, all...)

	// Followers refuse commands and name the leader; FSM errors come back.
	follower := raftTestFollowers(leader, all)[0]
	_, err := follower.r.Apply(raftTestCmd(1), time.Second)
	if !errors.Is(err, ErrNotLeader) || !strings.Contains(err.Error(), leader.id) {
		t.Fatalf("apply on a follower: %v, want ErrNotLeader naming %s", err, leader.id)
	}
	if _, err := leader.r.Apply([]byte("fail"), time.Second); !errors.Is(err, errRaftTestFail) {
		t.Fatalf("apply of a failing command: %v, want the FSM's error", err)
	}
	if err := leader.r.Barrier(time.Second); err != nil {
		t.Fatal(err)
	}
	if err := follower.r.Barrier(time.Second); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("barrier on a follower: %v", err)
	}
	if v := <-leader.r.LeadershipChanges(); !v {
		t.Fatal("the leader's LeadershipChanges should start with true")
	}
	if v := <-follower.r.LeadershipChanges(); v {
		t.Fatal("a follower's LeadershipChanges should start with false")
	}
}

func TestRaftLeaderFailover(t *testing.T) {
	c := raftTestNewCluster(t)
	leader, all := c.formThree(nil)
	c.apply(leader, 40)
	c.apply(leader, 2)
	c.waitValue(42, all...)
	term := leader.r.Term()

	survivors := raftTestFollowers(leader, all)
	changes := []<-chan bool{survivors[0].r.LeadershipChanges(), survivors[1].r.LeadershipChanges()}
	for _, ch := range changes {
		<-ch // the current state: false
	}
	killed := time.Now()
	leader.kill()
	var took time.Duration
	select {
	case <-changes[0]:
	case <-changes[1]:
	case <-time.After(5 * time.Second):
		t.Fatal("no new leader within 5 s of the leader's crash")
	}
	took = time.Since(killed)
	next := c.leader(5*time.Second, survivors...)
	t.Logf("new leader %s %s after the leader %s was killed (term %d -> %d)",
		next.id, took.Round(time.Millisecond), leader.id, term, next.r.Term())
	if took > 3*time.Second {
		t.Errorf("failover took %s, want about 0.6 s", took)
	}
	if next.r.Term() <= term {
		t.Fatalf("term %d after failover, was %d", next.r.Term(), term)
	}
	if next.fsm.value() != 42 {
		t.Fatalf("the new leader's FSM holds %d, want 42", next.fsm.value())
	}
	if got := c.apply(next, 8); got != 50 {
		t.Fatalf("apply after failover returned %d, want 50", got)
	}
	c.waitValue(50, survivors...)
}

func TestRaftNonVoterJoinsAndGetsState(t *testing.T) {
	c := raftTestNewCluster(t)
	leader, all := c.formThree(func(cfg *RaftConfig) { cfg.TrailingLogs = 1 })
	for range 20 {
		c.apply(leader, 5)
	}
	c.waitValue(100, all...)
	// Compact the log so that the newcomer must install a snapshot.
	if err := leader.r.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}

	// "a0" sorts before n1..n3 and expects 3 nodes: it must not bootstrap a
	// second cluster beside the formed one, but wait to be added.
	a0 := c.add("a0", func(cfg *RaftConfig) { cfg.BootstrapExpect = 3 })
	c.waitServers(leader, 5*time.Second, "a0:nonvoter", "n1:voter", "n2:voter", "n3:voter")
	c.waitValue(100, a0)
	if id, _ := a0.r.Leader(); id != leader.id {
		t.Fatalf("a0 follows %q, want %s", id, leader.id)
	}
	c.apply(leader, 1)
	c.waitValue(101, append(all, a0)...)
	testkit.WaitFor(t, 3*time.Second, "a0 to gossip HasRaftState", func() bool {
		m, _ := gossipTestMember(leader.g, "a0")
		return m.Meta.HasRaftState
	})
	if _, err := a0.r.Apply(raftTestCmd(1), time.Second); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("apply on a non-voter: %v", err)
	}
}

func TestRaftDeadNodeRemovedAfterGraceAndNonVoterPromoted(t *testing.T) {
	const grace = time.Second
	c := raftTestNewCluster(t)
	leader, all := c.formThree(func(cfg *RaftConfig) { cfg.DeadGrace = grace })
	n4 := c.add("n4", func(cfg *RaftConfig) { cfg.DeadGrace = grace })
	c.waitServers(leader, 5*time.Second, "n1:voter", "n2:voter", "n3:voter", "n4:nonvoter")
	c.apply(leader, 7)

	victim := raftTestFollowers(leader, all)[0]
	victim.kill()
	var dead Member
	testkit.WaitFor(t, 3*time.Second, "the leader's gossip to find "+victim.id+" dead", func() bool {
		dead, _ = gossipTestMember(leader.g, victim.id)
		return dead.State == MemberDead
	})
	if got := raftTestServers(t, leader); !slices.Contains(got, victim.id+":voter") {
		t.Fatalf("%s removed before its grace ran out: %v", victim.id, got)
	}
	testkit.WaitFor(t, grace+3*time.Second, victim.id+" to leave the raft configuration", func() bool {
		return !slices.ContainsFunc(raftTestServers(t, leader), func(s string) bool { return strings.HasPrefix(s, victim.id+":") })
	})
	after := time.Since(dead.Since)
	t.Logf("%s removed %s after gossip found it dead (grace %s)", victim.id, after.Round(time.Millisecond), grace)
	if after < grace {
		t.Fatalf("removed after %s, before the grace of %s", after, grace)
	}
	var want []string
	for _, n := range append(all, n4) {
		if n != victim {
			want = append(want, n.id+":voter")
		}
	}
	c.waitServers(leader, 3*time.Second, want...)
	c.apply(leader, 1)
	c.waitValue(8, n4)
}

func TestRaftGracefulLeaveRemovedAtOnce(t *testing.T) {
	c := raftTestNewCluster(t)
	leader, all := c.formThree(nil) // DeadGrace 30 s: a removal now is not the grace running out
	n4 := c.add("n4", nil)
	c.waitServers(leader, 5*time.Second, "n1:voter", "n2:voter", "n3:voter", "n4:nonvoter")

	leaver := raftTestFollowers(leader, all)[0]
	// While it is leaving (its partitions would be moving away), it stays.
	if err := leaver.g.AnnounceLeave(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 2*time.Second, "the leader to see "+leaver.id+" leaving", func() bool {
		m, _ := gossipTestMember(leader.g, leaver.id)
		return m.State == MemberLeaving
	})
	if got := raftTestServers(t, leader); !slices.Contains(got, leaver.id+":voter") {
		t.Fatalf("%s removed while still leaving: %v", leaver.id, got)
	}
	start := time.Now()
	if err := leaver.g.Leave(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	leaver.r.Shutdown()
	leaver.g.Shutdown()
	var want []string
	for _, n := range append(all, n4) {
		if n != leaver {
			want = append(want, n.id+":voter")
		}
	}
	c.waitServers(leader, 3*time.Second, want...)
	t.Logf("%s removed and n4 promoted %s after Leave began", leaver.id, time.Since(start).Round(time.Millisecond))
}

func TestRaftRestartRejoinsWithLogIntact(t *testing.T) {
	c := raftTestNewCluster(t)
	leader, all := c.formThree(nil)
	for range 5 {
		c.apply(leader, 10)
	}
	c.waitValue(50, all...)
	n := raftTestFollowers(leader, all)[0]
	before := n.r.raft.LastIndex()
	n.kill()

	for range 5 {
		c.apply(leader, 1) // committed by the two others while n is down
	}
	c.restart(n)
	if got := n.r.raft.LastIndex(); got < before {
		t.Fatalf("%s restarted with last index %d, had %d", n.id, got, before)
	}
	t.Logf("%s restarted with its log up to index %d", n.id, n.r.raft.LastIndex())
	c.waitValue(55, n)
	now := c.leader(5*time.Second, all...)
	c.waitServers(now, 3*time.Second, "n1:voter", "n2:voter", "n3:voter")
	c.apply(now, 1)
	c.waitValue(56, all...)
}

func TestRaftSingleNodeBootstrapAndRestart(t *testing.T) {
	cfg := raftTestConfig(t, "solo")
	cfg.Bootstrap = true
	fsm := &raftTestFSM{}
	r, err := StartRaft(cfg, fsm, nil)
	if err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "solo to lead", r.IsLeader)
	for range 3 {
		if _, err := r.Apply(raftTestCmd(3), time.Second); err != nil {
			t.Fatal(err)
		}
	}
	addr := r.Addr()
	r.Shutdown()
	if _, err := r.Apply(raftTestCmd(1), time.Second); err == nil {
		t.Fatal("apply after shutdown should fail")
	}

	cfg.BindAddr = addr
	fsm2 := &raftTestFSM{}
	r2, err := StartRaft(cfg, fsm2, nil) // Bootstrap again: a no-op on existing state
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Shutdown()
	testkit.WaitFor(t, 5*time.Second, "solo to lead again", r2.IsLeader)
	if err := r2.Barrier(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if got := fsm2.value(); got != 9 {
		t.Fatalf("restarted FSM holds %d, want 9", got)
	}

	// A second process on the same data dir fails fast instead of hanging.
	cfg.BindAddr = "127.0.0.1:0"
	if _, err := StartRaft(cfg, &raftTestFSM{}, nil); err == nil {
		t.Fatal("a second raft on the same data dir should fail")
	}
	for _, p := range []string{"raft/raft.db", "raft/snapshots"} {
		if _, err := os.Stat(filepath.Join(cfg.DataDir, p)); err != nil {
			t.Fatalf("raft state not where documented: %v", err)
		}
	}
}

// TestRaftFailedStartReleasesItsState starts Raft where it fails after it
// opened its log (the port is taken), and where it fails after the Raft
// server runs (gossip is shut down): each time a new start on the same data
// dir and port succeeds, so the failed one closed what it had opened.
func TestRaftFailedStartReleasesItsState(t *testing.T) {
	cfg := raftTestConfig(t, "n1")
	cfg.Bootstrap = true
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.BindAddr = taken.Addr().String()
	if _, err := StartRaft(cfg, &raftTestFSM{}, nil); err == nil {
		t.Fatal("raft started on a port in use")
	}
	taken.Close()

	g := gossipTestStart(t, gossipTestConfig(t, "n1"))
	g.Shutdown()
	if _, err := StartRaft(cfg, &raftTestFSM{}, g); !errors.Is(err, ErrGossipShutdown) {
		t.Fatalf("raft started with gossip shut down: %v, want %v", err, ErrGossipShutdown)
	}

	r, err := StartRaft(cfg, &raftTestFSM{}, nil)
	if err != nil {
		t.Fatalf("start after the failed starts: %v", err)
	}
	defer r.Shutdown()
	testkit.WaitFor(t, 5*time.Second, "n1 to lead", r.IsLeader)
}

func TestRaftConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*RaftConfig)
		ok     bool
	}{
		{"default", func(*RaftConfig) {}, true},
		{"no node id", func(c *RaftConfig) { c.NodeID = "" }, false},
		{"unspecified bind", func(c *RaftConfig) { c.BindAddr = "0.0.0.0:7947" }, false},
		{"unspecified bind with advertise", func(c *RaftConfig) { c.BindAddr = "0.0.0.0:7947"; c.AdvertiseAddr = "10.0.0.1:7947" }, true},
		{"bad bind", func(c *RaftConfig) { c.BindAddr = "nope" }, false},
		{"no data dir", func(c *RaftConfig) { c.DataDir = "" }, false},
		{"both bootstraps", func(c *RaftConfig) { c.Bootstrap = true; c.BootstrapExpect = 3 }, false},
		{"expect above max voters", func(c *RaftConfig) { c.BootstrapExpect = 5 }, false},
		{"five voters", func(c *RaftConfig) { c.MaxVoters = 5; c.BootstrapExpect = 5 }, true},
		{"even voters", func(c *RaftConfig) { c.MaxVoters = 4 }, false},
		{"lease above heartbeat", func(c *RaftConfig) { c.LeaderLeaseTimeout = time.Second }, false},
		{"negative grace", func(c *RaftConfig) { c.DeadGrace = -1 }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultRaftConfig()
			cfg.NodeID = "n1"
			tc.mutate(&cfg)
			if err := cfg.Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
		})
	}
	if _, err := StartRaft(DefaultRaftConfig(), nil, nil); err == nil {
		t.Fatal("StartRaft without an FSM should fail")
	}
}
