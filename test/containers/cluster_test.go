//go:build containers

package containers

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eddyrt/eddy"
)

// Sizes of the deployment under test.
const (
	partitions = 4 // of each actor type: bank, lines, words
	// progressTimeout bounds the wait for every partition to commit again
	// after a fault or a repair.
	progressTimeout = time.Minute
	// moveGoal is how soon the partitions of a node cut off NATS must run
	// elsewhere (the goal); the test reports the figure and fails
	// only past progressTimeout, since this host is shared.
	moveGoal = 5 * time.Second
	// controlCutFor keeps a node off the control network longer than
	// memberlist gossips to a member it declared dead (30 s), so that the
	// heal rests on eddy's own reconnection to members held dead.
	controlCutFor = 35 * time.Second
)

// TestCluster runs the deployment of compose.yaml (3 nats-servers in a
// JetStream cluster, 3 eddy nodes in zones a, b, c running the bank and
// the word count, streams of 3 replicas) under load from a plain JetStream
// producer, and puts it through one fault after another. After each, every
// account, every word and every emitted running count must be exactly what
// the producer's model says; the scenario's events, violations, longest
// gap between two commits of a partition and time to heal are reported at
// the end.
func TestCluster(t *testing.T) {
	start := time.Now()
	c := newDockerCluster(t, partitions)
	t.Logf("cluster up in %v", time.Since(start).Round(100*time.Millisecond))
	l := newLoad(t, c, uint64(time.Now().UnixNano()))
	w := watchProgress(c)
	var report []figures
	t.Cleanup(func() {
		var b strings.Builder
		for _, f := range report {
			b.WriteString("\n  " + f.String())
		}
		t.Logf("figures per scenario:%s", b.String())
	})
	scenario := func(name string, run func(t *testing.T, f *figures)) {
		t.Run(name, func(t *testing.T) {
			c.t, l.t = t, t
			sent := l.p.Events()
			w.gaps()
			f := figures{name: name}
			run(t, &f)
			each, longest, of := w.gaps()
			if f.longestGap == 0 { // else the scenario measured its own (an outage)
				f.longestGap, f.gapOf = longest, of
			}
			var all int64
			all, f.violations = l.verify(t)
			f.events = all - sent
			t.Logf("longest gap between commits per partition: %s", each)
			report = append(report, f)
		})
	}

	scenario("NATSServerCutOffThenKilled", func(t *testing.T, f *figures) {
		// The server no node is given, so no node is connected to it: it
		// carries a replica of every stream, and the JetStream cluster
		// loses it.
		victim := c.nats[spareNATS]
		if c.natsServer(func(nodes int) bool { return nodes == 0 }) != victim {
			t.Fatalf("a node is connected to %s, which no node was given", victim.name)
		}
		cutOffThenKilled(t, c, l, w, victim, f)
	})

	// The same with the server the nodes are connected to: a node notices
	// its connection is dead by its pings (the cut sends no reset) and
	// moves to another server of its list.
	scenario("NATSServerOfNodesCutOff", func(t *testing.T, f *figures) {
		victim := c.natsServer(func(nodes int) bool { return nodes > 0 })
		if victim == nil {
			t.Fatal("no nats-server carries a node's connection")
		}
		cutOffThenKilled(t, c, l, w, victim, f)
	})

	// A server cut off from its peers but not from its clients: no
	// connection drops, JetStream just stops answering through it.
	scenario("NATSServerOfNodesCutOffFromPeers", func(t *testing.T, f *figures) { cutOffFromPeers(t, c, l, w, f) })

	scenario("ControlPlanePartition", func(t *testing.T, f *figures) { controlPlanePartition(t, c, l, w, f) })
	scenario("DataPlanePartition", func(t *testing.T, f *figures) { dataPlanePartition(t, c, l, w, f) })
	scenario("RollingRestart", func(t *testing.T, f *figures) { rollingRestart(t, c, l, w, f) })
	scenario("FullStopAndStart", func(t *testing.T, f *figures) { fullStopAndStart(t, c, l, w, f) })
}

// underLoad starts a round of load and waits until every partition has
// committed since; the gaps count from then (not the pause before).
func underLoad(t *testing.T, c *dockerCluster, l *load, w *progress) {
	t.Helper()
	began := time.Now()
	l.start()
	c.waitFor(progressTimeout, "every partition committing under load", func(context.Context) error {
		return w.committedSince(began)
	})
	w.gaps()
}

// cutOffThenKilled cuts nats-server victim off every network (its clients
// and its peers) under load for 10 s, then kills it, then starts it and
// connects it again: every partition commits throughout, after the cut and
// after the kill.
func cutOffThenKilled(t *testing.T, c *dockerCluster, l *load, w *progress, victim *container, f *figures) {
	t.Cleanup(func() { c.healNATS(t, victim) })
	underLoad(t, c, l, w)

	names, err := c.clients(context.Background(), victim)
	t.Logf("%s's clients before the cut: %q %v", victim.name, names, err)
	cut := time.Now()
	c.disconnect(victim, c.data)
	c.disconnect(victim, c.routes)
	c.waitFor(progressTimeout, victim.name+" cut off for 10 s, every partition committing 5 s after the cut", func(context.Context) error {
		if d := time.Since(cut); d < 10*time.Second {
			return fmt.Errorf("cut off for %v", d.Round(time.Second))
		}
		return w.committedSince(cut.Add(5 * time.Second))
	})

	// Then kill it: the streams have two replicas left of three.
	killed, sent := time.Now(), l.p.Events()
	c.kill(victim)
	c.waitFor(progressTimeout, victim.name+" killed, every partition committing and 300 more events", func(context.Context) error {
		if n := l.p.Events() - sent; n < 300 {
			return fmt.Errorf("%d events acknowledged since the kill", n)
		}
		return w.committedSince(killed)
	})

	// Bring it back: started isolated, then reconnected, it catches up
	// with its peers.
	back := time.Now()
	c.start(victim)
	c.reconnect(victim, c.routes)
	c.reconnect(victim, c.data)
	c.waitNATSReady(c.nats...)
	c.waitFor(progressTimeout, "every partition committing with "+victim.name+" back", func(context.Context) error {
		return w.committedSince(time.Now().Add(-time.Second))
	})
	f.heal = time.Since(back)
	f.note = "heal: server started and reconnected to JetStream healthy on all three"
}

// cutOffFromPeers cuts the nats-server the nodes are connected to off its
// peers only (the routes network): its clients stay connected, no ping
// fails, but JetStream does not answer through it. The nodes notice by
// probing JetStream and move to another server of their list; every
// partition commits again. Then the server is connected again.
func cutOffFromPeers(t *testing.T, c *dockerCluster, l *load, w *progress, f *figures) {
	victim := c.natsServer(func(nodes int) bool { return nodes > 0 })
	if victim == nil {
		t.Fatal("no nats-server carries a node's connection")
	}
	t.Cleanup(func() { c.healNATS(t, victim) })
	underLoad(t, c, l, w)
	names, err := c.clients(context.Background(), victim)
	t.Logf("%s's clients before the cut: %q %v", victim.name, names, err)

	cut := time.Now()
	c.disconnect(victim, c.routes)
	c.waitFor(progressTimeout, "no node connected to "+victim.name, func(ctx context.Context) error {
		names, err := c.clients(ctx, victim)
		if err != nil {
			return err
		}
		for _, name := range names {
			if strings.HasPrefix(name, "eddy n") {
				return fmt.Errorf("%q still connected", name)
			}
		}
		return nil
	})
	left := time.Since(cut)
	c.waitFor(progressTimeout, "every partition committing without "+victim.name, func(context.Context) error {
		return w.committedSince(cut.Add(left))
	})
	resumed := time.Since(cut)
	t.Logf("%s cut off its peers: the nodes left it %v after the cut, every partition committed again %v after it",
		victim.name, left.Round(100*time.Millisecond), resumed.Round(100*time.Millisecond))

	back := time.Now()
	c.reconnect(victim, c.routes)
	c.waitNATSReady(c.nats...)
	c.waitFor(progressTimeout, "every partition committing with "+victim.name+" back", func(context.Context) error {
		return w.committedSince(time.Now().Add(-time.Second))
	})
	f.heal = time.Since(back)
	f.note = fmt.Sprintf("nodes left the server in %v, all committing %v after the cut; heal: JetStream healthy on all three",
		left.Round(100*time.Millisecond), resumed.Round(100*time.Millisecond))
}

// healNATS leaves nats-server n started and on its networks, for the next
// scenario, after a scenario that failed half-way.
func (c *dockerCluster) healNATS(t *testing.T, n *container) {
	if !t.Failed() {
		return
	}
	_, _ = docker("start", n.name)
	for _, net := range []*network{c.data, c.routes} {
		if n.isCut(net) {
			_, _ = docker("network", "connect", "--ip", n.ips[net], net.name, n.name)
			n.setCut(net, false)
		}
	}
}

// controlPlanePartition cuts the Raft leader off the control network: it
// still reaches NATS, but not its peers. The others elect a leader and
// take its partitions at new epochs; its own partition actors are fenced
// at their next commit, so no two owners commit. After controlCutFor it is
// connected again and rejoins, and takes partitions again.
func controlPlanePartition(t *testing.T, c *dockerCluster, l *load, w *progress, f *figures) {
	victim := c.leader(t)
	t.Cleanup(func() {
		if victim.isCut(c.control) {
			_, _ = docker("network", "connect", "--ip", victim.ips[c.control], c.control.name, victim.name)
			victim.setCut(c.control, false)
		}
	})
	underLoad(t, c, l, w)
	before := c.assignment(t)
	lost := before.activeOn(victim)
	t.Logf("%s (the leader) holds %d partitions: %v", victim.name, len(lost), lost.keys())

	cut := time.Now()
	c.disconnect(victim, c.control)
	c.waitFor(progressTimeout, victim.name+"'s partitions running elsewhere at new epochs", func(ctx context.Context) error {
		return c.movedOff(ctx, victim, lost)
	})
	moved := time.Since(cut)
	t.Logf("control plane of %s cut: its partitions run elsewhere %v after the cut", victim.name, moved.Round(10*time.Millisecond))

	// The cut-off node still reaches NATS, and its actors try to commit:
	// each is fenced by the new owner's epoch.
	var states []string
	c.waitFor(progressTimeout, "every partition actor "+victim.name+" ran fenced there", func(ctx context.Context) error {
		st, err := c.nodeStatus(ctx, victim)
		if err != nil {
			return err
		}
		states = states[:0]
		fenced := 0
		for _, p := range st {
			k := fmt.Sprintf("%s/%d", p.Type, p.Partition)
			if _, ok := lost[k]; ok {
				states = append(states, fmt.Sprintf("%s epoch %d %s", k, p.Epoch, p.State))
				if p.State == "fenced" {
					fenced++
				}
			}
		}
		if fenced < len(lost) {
			return fmt.Errorf("on %s: %v", victim.name, states)
		}
		return nil
	})
	t.Logf("on %s, cut off: %s", victim.name, strings.Join(states, ", "))
	c.waitFor(progressTimeout, fmt.Sprintf("%s off the control network for %v", victim.name, controlCutFor), func(context.Context) error {
		if d := time.Since(cut); d < controlCutFor {
			return fmt.Errorf("cut off for %v", d.Round(time.Second))
		}
		return w.committedSince(time.Now().Add(-2 * time.Second))
	})

	f.heal = c.reconnectAndRejoin(victim, c.control)
	f.note = fmt.Sprintf("moved off the cut leader in %v; heal: rejoined and holds partitions", moved.Round(10*time.Millisecond))
}

// dataPlanePartition cuts a node off the data network: it reaches its
// peers but not NATS. It notices by its connection's pings and tells the
// cluster, whose leader fails its partitions over to the nodes that reach
// NATS (goal: within moveGoal). Once connected again it takes work again.
func dataPlanePartition(t *testing.T, c *dockerCluster, l *load, w *progress, f *figures) {
	victim := c.nodes[len(c.nodes)-1]
	t.Cleanup(func() {
		if victim.isCut(c.data) {
			_, _ = docker("network", "connect", "--ip", victim.ips[c.data], c.data.name, victim.name)
			victim.setCut(c.data, false)
		}
	})
	underLoad(t, c, l, w)
	lost := c.assignment(t).activeOn(victim)
	t.Logf("%s holds %d partitions: %v", victim.name, len(lost), lost.keys())

	cut := time.Now()
	c.disconnect(victim, c.data)
	var sawDown bool
	c.waitFor(progressTimeout, victim.name+"'s partitions running elsewhere at new epochs", func(ctx context.Context) error {
		st, err := c.clusterStatus(ctx, c.nodes[0])
		if err == nil {
			for _, m := range st.Members {
				sawDown = sawDown || m.ID == nodeID(victim) && m.NATS == "down"
			}
		}
		return c.movedOff(ctx, victim, lost)
	})
	moved := time.Since(cut)
	t.Logf("data plane of %s cut: its partitions run elsewhere %v after the cut (goal %v)", victim.name, moved.Round(10*time.Millisecond), moveGoal)
	if !sawDown {
		t.Errorf("/v1/cluster never showed %s's NATS down", victim.name)
	}
	c.waitFor(progressTimeout, "every partition committing without "+victim.name, func(context.Context) error {
		return w.committedSince(cut.Add(moved))
	})

	f.heal = c.reconnectAndRejoin(victim, c.data)
	goal := "met"
	if moved > moveGoal {
		goal = "MISSED"
	}
	f.note = fmt.Sprintf("moved in %v (goal %v: %s); heal: holds partitions again", moved.Round(10*time.Millisecond), moveGoal, goal)
}

// rollingRestart restarts every node, one at a time: SIGTERM (a graceful
// leave hands its partitions over), exit status 0, start on the same
// volume, and wait until the cluster has settled with it holding
// partitions again.
func rollingRestart(t *testing.T, c *dockerCluster, l *load, w *progress, f *figures) {
	underLoad(t, c, l, w)
	var longestHeal time.Duration
	for _, n := range c.nodes {
		stopped := time.Now()
		c.stop(n)
		c.checkExit(n, stopped)
		t.Logf("%s stopped in %v", n.name, time.Since(stopped).Round(100*time.Millisecond))
		started := time.Now()
		c.start(n)
		c.waitSettled()
		c.waitFor(progressTimeout, n.name+" holding partitions again", func(ctx context.Context) error {
			return c.holdsActives(ctx, n)
		})
		heal := time.Since(started)
		longestHeal = max(longestHeal, heal)
		t.Logf("%s restarted: holds partitions again %v after its start", n.name, heal.Round(100*time.Millisecond))
	}
	f.heal = longestHeal
	f.note = "heal: the longest from a node's start to it holding partitions"
}

// fullStopAndStart stops every node (SIGTERM, all at once) and every
// nats-server, starts them all on the same volumes, and checks that the
// state is as it was and processing resumes.
func fullStopAndStart(t *testing.T, c *dockerCluster, l *load, w *progress, f *figures) {
	underLoad(t, c, l, w)
	events, _ := l.verify(t) // pauses the load
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	before, err := l.readState(ctx)
	if err != nil {
		t.Fatal(err)
	}

	stopped := time.Now()
	parallel(t, c.nodes, "stop", "-t", fmt.Sprint(int(stopTimeout.Seconds())))
	for _, n := range c.nodes {
		c.checkExit(n, stopped)
	}
	stopTook := time.Since(stopped)
	t.Logf("nodes stopped in %v", stopTook.Round(100*time.Millisecond))
	parallel(t, c.nats, "stop", "-t", fmt.Sprint(int(stopTimeout.Seconds())))

	restarted := time.Now()
	c.startNATS()
	c.startNodes()
	f.heal = time.Since(restarted)
	f.note = fmt.Sprintf("nodes stopped in %v; heal: NATS and nodes started, every partition running (%d events before the stop)",
		stopTook.Round(100*time.Millisecond), events)

	after, err := l.readState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for a, want := range before.Accounts {
		if after.Accounts[a] != want {
			t.Errorf("after the restart %s is %+v; before the stop %+v", a, after.Accounts[a], want)
		}
	}
	for word, want := range before.Words {
		if after.Words[word] != want {
			t.Errorf("after the restart %q counts %d; before the stop %d", word, after.Words[word], want)
		}
	}
	underLoad(t, c, l, w)
	f.longestGap, f.gapOf = time.Since(stopped), "every partition: the outage, from the stop to committing again"
	c.waitFor(progressTimeout, "300 events after the restart", func(context.Context) error {
		if n := l.p.Events() - events; n < 300 {
			return fmt.Errorf("%d events", n)
		}
		return nil
	})
}

// parallel runs docker args... name for every container at once and
// fails the test if any fails.
func parallel(t *testing.T, cs []*container, args ...string) {
	t.Helper()
	errs := make([]error, len(cs))
	var wg sync.WaitGroup
	for i, n := range cs {
		wg.Go(func() { _, errs[i] = docker(append(args, n.name)...) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// Assignment views.

// actives maps "type/p" to the epoch of an active partition.
type actives map[string]uint64

func (a actives) keys() []string {
	var ks []string
	for k := range a {
		ks = append(ks, k)
	}
	return ks
}

// assignment is the assignment as a node that is not cut off sees it.
type assignment struct{ st eddy.ClusterStatus }

func (a assignment) activeOn(n *container) actives {
	out := actives{}
	for _, p := range a.st.Partitions {
		if p.Active == nodeID(n) {
			out[fmt.Sprintf("%s/%d", p.Type, p.Partition)] = p.Epoch
		}
	}
	return out
}

// nodeID is the node id container n runs as: n1, n2, n3.
func nodeID(n *container) string { return n.name[strings.LastIndexByte(n.name, '-')+1:] }

func (c *dockerCluster) assignment(t *testing.T) assignment {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, n := range c.nodes {
		if n.isolated() {
			continue
		}
		if st, err := c.clusterStatus(ctx, n); err == nil {
			return assignment{st}
		}
	}
	t.Fatal("no node answers /v1/cluster")
	return assignment{}
}

// leader is the container of the Raft leader.
func (c *dockerCluster) leader(t *testing.T) *container {
	t.Helper()
	id := c.assignment(t).st.Leader
	for _, n := range c.nodes {
		if nodeID(n) == id {
			return n
		}
	}
	t.Fatalf("leader %q is no node of the test", id)
	return nil
}

// movedOff reports nil once every partition of lost is active on another
// node than victim, at a newer epoch, and running there, as the nodes that
// are not cut off see it.
func (c *dockerCluster) movedOff(ctx context.Context, victim *container, lost actives) error {
	for _, n := range c.nodes {
		if n == victim || n.isolated() {
			continue
		}
		st, err := c.clusterStatus(ctx, n)
		if err != nil {
			return err
		}
		for _, p := range st.Partitions {
			k := fmt.Sprintf("%s/%d", p.Type, p.Partition)
			if e, ok := lost[k]; ok && (p.Active == nodeID(victim) || p.Epoch <= e || p.State != "running") {
				return fmt.Errorf("%s: active %s epoch %d (was %d) %s", k, p.Active, p.Epoch, e, p.State)
			}
		}
		return nil
	}
	return errors.New("no node to ask")
}

// reconnectAndRejoin connects node n to network net again and waits until
// the cluster has settled with n holding partitions; it returns how long
// that took.
func (c *dockerCluster) reconnectAndRejoin(n *container, net *network) time.Duration {
	c.t.Helper()
	healed := time.Now()
	c.reconnect(n, net)
	c.waitSettled()
	c.waitFor(progressTimeout, n.name+" holding partitions again", func(ctx context.Context) error {
		return c.holdsActives(ctx, n)
	})
	return time.Since(healed)
}

// holdsActives reports nil once n runs at least one active partition.
func (c *dockerCluster) holdsActives(ctx context.Context, n *container) error {
	st, err := c.clusterStatus(ctx, c.nodes[0])
	if err != nil {
		return err
	}
	for _, p := range st.Partitions {
		if p.Active == nodeID(n) && p.State == "running" {
			return nil
		}
	}
	return fmt.Errorf("%s holds no running partition", n.name)
}

// nodeStatus is /v1/status of node n: its partition actors.
func (c *dockerCluster) nodeStatus(ctx context.Context, n *container) ([]eddy.PartitionStatus, error) {
	var body struct {
		Partitions []eddy.PartitionStatus `json:"partitions"`
	}
	err := c.get(ctx, c.nodeURL(n)+"/v1/status", &body)
	return body.Partitions, err
}

// slowStop is how long a node may take to stop on SIGTERM before the test
// shows why: a graceful leave hands its partitions over in well under a
// second here.
const slowStop = 10 * time.Second

// checkExit fails the test, with the end of node n's log, if n did not
// exit with status 0 after SIGTERM; and shows that log if it took longer
// than slowStop (since stopping began) to do so.
func (c *dockerCluster) checkExit(n *container, since time.Time) {
	c.t.Helper()
	code, took := c.exitCode(n), time.Since(since)
	if code == "0" && took < slowStop {
		return
	}
	out, _ := exec.Command("docker", "logs", "--tail", "60", n.name).CombinedOutput()
	if code != "0" {
		c.t.Errorf("%s exited with %s after SIGTERM; the end of its log:\n%s", n.name, code, out)
		return
	}
	c.t.Logf("%s took %v to stop; the end of its log:\n%s", n.name, took.Round(100*time.Millisecond), out)
}
