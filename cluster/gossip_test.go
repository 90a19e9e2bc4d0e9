package cluster

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eddyrt/eddy/internal/testkit"
)

func gossipTestConfig(t testing.TB, id string, seeds ...string) GossipConfig {
	cfg := DefaultGossipConfig()
	cfg.NodeID = id
	cfg.Meta = NodeMeta{NodeID: id, HTTPAddr: "127.0.0.1:80" + id[len(id)-1:], Zone: "zone-" + id}
	cfg.BindAddr = "127.0.0.1"
	cfg.BindPort = 0
	cfg.Join = seeds
	cfg.JoinRetryInterval = 50 * time.Millisecond
	cfg.Logger = gossipTestLogger(t)
	return cfg
}

func gossipTestStart(t testing.TB, cfg GossipConfig) *Gossip {
	t.Helper()
	g, err := StartGossip(cfg)
	if err != nil {
		t.Fatalf("start gossip %s: %v", cfg.NodeID, err)
	}
	t.Cleanup(func() { g.Shutdown() })
	return g
}

// gossipTestCluster starts n nodes, n1 first and the others joining through it.
func gossipTestCluster(t testing.TB, n int, mutate func(*GossipConfig)) []*Gossip {
	t.Helper()
	var nodes []*Gossip
	for i := 1; i <= n; i++ {
		var seeds []string
		if i > 1 {
			seeds = []string{nodes[0].Addr()}
		}
		cfg := gossipTestConfig(t, fmt.Sprintf("n%d", i), seeds...)
		if mutate != nil {
			mutate(&cfg)
		}
		nodes = append(nodes, gossipTestStart(t, cfg))
	}
	gossipTestWaitAlive(t, nodes, nodes...)
	return nodes
}

// gossipTestWaitAlive waits until every observer sees exactly the members
// alive, and no one else alive.
func gossipTestWaitAlive(t testing.TB, observers []*Gossip, members ...*Gossip) {
	t.Helper()
	var want []string
	for _, m := range members {
		want = append(want, m.ID())
	}
	slices.Sort(want)
	for _, o := range observers {
		testkit.WaitFor(t, 5*time.Second, fmt.Sprintf("%s to see %v alive", o.ID(), want), func() bool {
			return slices.Equal(gossipTestAliveIDs(o), want)
		})
	}
}

func gossipTestAliveIDs(g *Gossip) []string {
	var ids []string
	for _, m := range g.Members() {
		if m.State == MemberAlive {
			ids = append(ids, m.ID)
		}
	}
	return ids
}

func gossipTestMember(g *Gossip, id string) (Member, bool) {
	for _, m := range g.Members() {
		if m.ID == id {
			return m, true
		}
	}
	return Member{}, false
}

func TestGossipJoinThroughSeedList(t *testing.T) {
	// n2 starts first, with a seed list of a port nobody listens on and n1's
	// address, before n1 runs: it must keep retrying until n1 answers.
	n1Port := gossipTestFreePort(t)
	deadSeed := fmt.Sprintf("127.0.0.1:%d", gossipTestFreePort(t))
	n1Addr := fmt.Sprintf("127.0.0.1:%d", n1Port)
	n2 := gossipTestStart(t, gossipTestConfig(t, "n2", deadSeed, n1Addr))
	select {
	case <-n2.Joined():
		t.Fatal("n2 joined before any seed was up")
	default:
	}

	cfg := gossipTestConfig(t, "n1")
	cfg.BindPort = n1Port
	n1 := gossipTestStart(t, cfg)
	select {
	case <-n1.Joined():
	default:
		t.Fatal("a node without seeds should count as joined at once")
	}
	if n1.Addr() != n1Addr {
		t.Fatalf("n1 advertises %s, want %s", n1.Addr(), n1Addr)
	}
	select {
	case <-n2.Joined():
	case <-time.After(5 * time.Second):
		t.Fatal("n2 did not join once n1 came up")
	}

	n3 := gossipTestStart(t, gossipTestConfig(t, "n3", n2.Addr())) // any live member will do
	all := []*Gossip{n1, n2, n3}
	gossipTestWaitAlive(t, all, all...)
	for _, g := range all {
		if got := g.Members(); len(got) != 3 {
			t.Fatalf("%s lists %d members, want 3: %+v", g.ID(), len(got), got)
		}
	}
}

func TestGossipMetadataRoundTrip(t *testing.T) {
	nodes := gossipTestCluster(t, 2, func(c *GossipConfig) {
		c.Meta.RaftAddr = "127.0.0.1:7" + c.NodeID[1:] + "00"
	})
	n1, n2 := nodes[0], nodes[1]
	for _, pair := range [][2]*Gossip{{n1, n2}, {n2, n1}} {
		observer, subject := pair[0], pair[1]
		m, ok := gossipTestMember(observer, subject.ID())
		if !ok {
			t.Fatalf("%s does not know %s", observer.ID(), subject.ID())
		}
		if m.Meta != subject.LocalMeta() {
			t.Fatalf("%s sees %s's meta as %+v, want %+v", observer.ID(), subject.ID(), m.Meta, subject.LocalMeta())
		}
		if m.Addr != subject.Addr() || m.State != MemberAlive {
			t.Fatalf("%s sees %s as %+v", observer.ID(), subject.ID(), m)
		}
	}
	if n1.Incarnation() == 0 || n1.Incarnation() == n2.Incarnation() {
		t.Fatalf("incarnations n1 %d, n2 %d: want distinct, non-zero", n1.Incarnation(), n2.Incarnation())
	}
	want := NodeMeta{NodeID: "n1", RaftAddr: "127.0.0.1:7100", HTTPAddr: "127.0.0.1:801", Zone: "zone-n1", Incarnation: n1.Incarnation()}
	if got := n1.LocalMeta(); got != want {
		t.Fatalf("n1 meta %+v, want %+v", got, want)
	}

	// An update reaches the other node as an Update event.
	events, cancel := n2.Subscribe()
	defer cancel()
	if err := n1.UpdateMeta(func(m *NodeMeta) { m.HTTPAddr = "127.0.0.1:9999" }, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	ev := gossipTestAwaitEvent(t, events, 3*time.Second, "n1's update", func(ev MemberEvent) bool {
		return ev.Type == MemberUpdate && ev.Member.ID == "n1"
	})
	if ev.Member.Meta.HTTPAddr != "127.0.0.1:9999" || ev.Member.Meta.Zone != "zone-n1" {
		t.Fatalf("update carried %+v", ev.Member.Meta)
	}
	if err := n1.UpdateMeta(func(m *NodeMeta) { m.NodeID = "other" }, time.Second); err == nil {
		t.Fatal("changing the node id should fail")
	}
	if err := n1.UpdateMeta(func(m *NodeMeta) { m.Zone = strings.Repeat("z", 600) }, time.Second); err == nil {
		t.Fatal("metadata over memberlist's 512 bytes should fail")
	}
}

func TestGossipCrashDetectedWithin2s(t *testing.T) {
	nodes := gossipTestCluster(t, 3, nil)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	ev1, cancel1 := n1.Subscribe()
	defer cancel1()
	ev2, cancel2 := n2.Subscribe()
	defer cancel2()

	killed := time.Now()
	n3.Shutdown() // a crash: no Leave
	var wg sync.WaitGroup
	for _, o := range []struct {
		g  *Gossip
		ev <-chan MemberEvent
	}{{n1, ev1}, {n2, ev2}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			timer := time.NewTimer(3 * time.Second)
			defer timer.Stop()
			for {
				select {
				case ev, ok := <-o.ev:
					if !ok {
						t.Errorf("%s: events closed", o.g.ID())
						return
					}
					if ev.Type == MemberLeave && ev.Member.ID == "n3" {
						took := time.Since(killed)
						t.Logf("%s saw n3 %s %s after the kill", o.g.ID(), ev.Member.State, took.Round(time.Millisecond))
						if ev.Member.State != MemberDead {
							t.Errorf("%s saw n3 %s, want dead", o.g.ID(), ev.Member.State)
						}
						if took > 2*time.Second {
							t.Errorf("%s took %s to detect the crash, want about 1 s (at most 2 s)", o.g.ID(), took)
						}
						return
					}
				case <-timer.C:
					t.Errorf("%s did not see n3 die within 3 s", o.g.ID())
					return
				}
			}
		}()
	}
	wg.Wait()
	if m, _ := gossipTestMember(n1, "n3"); m.State != MemberDead {
		t.Fatalf("n1 lists n3 as %s, want dead", m.State)
	}
	gossipTestWaitAlive(t, []*Gossip{n1, n2}, n1, n2)
}

func TestGossipGracefulLeaveSeenAsLeft(t *testing.T) {
	nodes := gossipTestCluster(t, 3, nil)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	ev1, cancel1 := n1.Subscribe()
	defer cancel1()
	ev2, cancel2 := n2.Subscribe()
	defer cancel2()

	// Announced first: the others see n3 leaving while it still runs.
	if err := n3.AnnounceLeave(time.Second); err != nil {
		t.Fatal(err)
	}
	for _, o := range []*Gossip{n1, n2} {
		testkit.WaitFor(t, 2*time.Second, o.ID()+" to see n3 leaving", func() bool {
			m, _ := gossipTestMember(o, "n3")
			return m.State == MemberLeaving
		})
	}
	start := time.Now()
	if err := n3.Leave(time.Second); err != nil {
		t.Fatal(err)
	}
	for _, o := range []<-chan MemberEvent{ev1, ev2} {
		// Events of one member arrive in order: "leaving" (unless coalesced
		// into the leave itself), then "left".
		ev := gossipTestAwaitEvent(t, o, 2*time.Second, "n3 to leave", func(ev MemberEvent) bool {
			if ev.Member.ID == "n3" && ev.Type == MemberUpdate && ev.Member.State != MemberLeaving {
				t.Errorf("n3 updated to %s while leaving", ev.Member.State)
			}
			return ev.Type == MemberLeave && ev.Member.ID == "n3"
		})
		if ev.Member.State != MemberLeft {
			t.Fatalf("n3 seen %s after Leave, want left", ev.Member.State)
		}
	}
	t.Logf("leave seen by both after %s", time.Since(start).Round(time.Millisecond))
	if err := n3.UpdateMeta(func(m *NodeMeta) { m.Zone = "x" }, time.Second); err == nil {
		t.Fatal("a metadata update after Leave should fail: it would re-advertise the node")
	}
	n3.Shutdown()
	if err := n3.Leave(time.Second); err == nil {
		t.Fatal("Leave after Shutdown should fail, not panic")
	}
	if m, _ := gossipTestMember(n1, "n3"); m.State != MemberLeft {
		t.Fatalf("n1 lists n3 as %s, want left", m.State)
	}
}

func TestGossipEncryption(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	nodes := gossipTestCluster(t, 2, func(c *GossipConfig) { c.SecretKey = key })
	n1, n2 := nodes[0], nodes[1]
	events, cancel := n1.Subscribe()
	defer cancel()

	// A node with another key, and one with none, cannot join.
	wrong := gossipTestConfig(t, "n3", n1.Addr())
	wrong.SecretKey = bytes.Repeat([]byte{9}, 16)
	wrong.JoinRetryAttempts = 3
	n3 := gossipTestStart(t, wrong)
	plain := gossipTestConfig(t, "n4", n1.Addr())
	plain.JoinRetryAttempts = 3
	n4 := gossipTestStart(t, plain)

	// Three join attempts 50 ms apart are over well within a second.
	timer := time.NewTimer(time.Second)
	defer timer.Stop()
wait:
	for {
		select {
		case ev := <-events:
			if ev.Member.ID == "n3" || ev.Member.ID == "n4" {
				t.Fatalf("n1 saw %s %s", ev.Member.ID, ev.Type)
			}
		case <-timer.C:
			break wait
		}
	}
	for _, g := range []*Gossip{n3, n4} {
		select {
		case <-g.Joined():
			t.Fatalf("%s joined an encrypted cluster without its key", g.ID())
		default:
		}
	}
	gossipTestWaitAlive(t, []*Gossip{n1, n2}, n1, n2)
	if got := gossipTestAliveIDs(n3); !slices.Equal(got, []string{"n3"}) {
		t.Fatalf("n3 sees %v", got)
	}
}

func TestGossipEventsCoalesceForASlowReader(t *testing.T) {
	s := &memberSub{
		out:     make(chan MemberEvent),
		notify:  make(chan struct{}, 1),
		done:    make(chan struct{}),
		pending: make(map[string]MemberEvent),
	}
	// Nobody reads yet: pushes must not block, and the queue keeps one event
	// per member.
	member := func(id string, zone string, state MemberState) Member {
		return Member{ID: id, Meta: NodeMeta{NodeID: id, Zone: zone}, State: state}
	}
	for i := range 1000 {
		id := fmt.Sprintf("m%d", i%10)
		typ := MemberUpdate
		if i < 10 {
			typ = MemberJoin
		}
		s.push(MemberEvent{Type: typ, Member: member(id, fmt.Sprint(i), MemberAlive)})
	}
	s.push(MemberEvent{Type: MemberLeave, Member: member("m3", "gone", MemberDead)})
	if n := len(s.pending); n != 10 {
		t.Fatalf("%d events pending, want one per member (10)", n)
	}

	var wg sync.WaitGroup
	wg.Add(1)
	go s.pump(&wg)
	for i := range 10 {
		ev := <-s.out
		id := fmt.Sprintf("m%d", i)
		if ev.Member.ID != id {
			t.Fatalf("event %d is about %s, want %s (arrival order)", i, ev.Member.ID, id)
		}
		if id == "m3" {
			if ev.Type != MemberLeave || ev.Member.State != MemberDead {
				t.Fatalf("m3: %s %s, want leave/dead", ev.Type, ev.Member.State)
			}
			continue
		}
		if ev.Type != MemberJoin {
			t.Fatalf("%s: %s, want the unseen join kept", id, ev.Type)
		}
		if want := fmt.Sprint(990 + i); ev.Member.Meta.Zone != want {
			t.Fatalf("%s carries zone %s, want the newest (%s)", id, ev.Member.Meta.Zone, want)
		}
	}
	s.push(MemberEvent{Type: MemberUpdate, Member: member("m1", "later", MemberAlive)})
	if ev := <-s.out; ev.Type != MemberUpdate || ev.Member.Meta.Zone != "later" {
		t.Fatalf("got %s %+v", ev.Type, ev.Member.Meta)
	}
	close(s.done)
	wg.Wait()
	if _, ok := <-s.out; ok {
		t.Fatal("out should be closed when the subscription ends")
	}
}

func TestGossipSubscribeReplaysMembersAndShutdownCloses(t *testing.T) {
	nodes := gossipTestCluster(t, 2, nil)
	events, _ := nodes[0].Subscribe()
	var seen []string
	for range 2 {
		ev := gossipTestAwaitEvent(t, events, time.Second, "replayed joins", func(MemberEvent) bool { return true })
		if ev.Type != MemberJoin {
			t.Fatalf("replayed %s, want join", ev.Type)
		}
		seen = append(seen, ev.Member.ID)
	}
	if !slices.Equal(seen, []string{"n1", "n2"}) {
		t.Fatalf("replayed %v", seen)
	}
	// Events() began with this node's own join.
	ev := gossipTestAwaitEvent(t, nodes[0].Events(), time.Second, "own join", func(MemberEvent) bool { return true })
	if ev.Type != MemberJoin || ev.Member.ID != "n1" {
		t.Fatalf("first event %s %s", ev.Type, ev.Member.ID)
	}
	nodes[0].Shutdown()
	gossipTestAwaitClosed(t, events)
	gossipTestAwaitClosed(t, nodes[0].Events())
	late, _ := nodes[0].Subscribe()
	if _, ok := <-late; ok {
		t.Fatal("a subscription after Shutdown should be closed")
	}
}

func TestGossipConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*GossipConfig)
		ok     bool
	}{
		{"default", func(*GossipConfig) {}, true},
		{"no node id", func(c *GossipConfig) { c.NodeID = "" }, false},
		{"meta id differs", func(c *GossipConfig) { c.Meta.NodeID = "other" }, false},
		{"meta id empty is filled", func(c *GossipConfig) { c.Meta.NodeID = "" }, true},
		{"bind not an IP", func(c *GossipConfig) { c.BindAddr = "localhost" }, false},
		{"bad port", func(c *GossipConfig) { c.BindPort = 70000 }, false},
		{"bad key", func(c *GossipConfig) { c.SecretKey = make([]byte, 10) }, false},
		{"aes-128 key", func(c *GossipConfig) { c.SecretKey = make([]byte, 16) }, true},
		{"bad profile", func(c *GossipConfig) { c.Profile = "wan" }, false},
		{"lan profile", func(c *GossipConfig) { c.Profile = ProfileLAN }, true},
		{"bad seed", func(c *GossipConfig) { c.Join = []string{"no-port"} }, false},
		{"no retry interval", func(c *GossipConfig) { c.Join = []string{"127.0.0.1:1"}; c.JoinRetryInterval = 0 }, false},
		{"meta too big", func(c *GossipConfig) { c.Meta.Zone = strings.Repeat("z", 600) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultGossipConfig()
			cfg.NodeID, cfg.Meta.NodeID = "n1", "n1"
			tc.mutate(&cfg)
			if err := cfg.Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
