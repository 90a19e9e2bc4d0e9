//go:build containers

package containers

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// Sizes of the deployment under test.
const (
	partitions = 4
	accounts   = 200
	rate       = 100 // transfers a second
	// invariantsTimeout bounds the wait for every event sent to be
	// processed once the load stops: a second or two here.
	invariantsTimeout = time.Minute
	// progressTimeout bounds the wait for every partition to commit again
	// after a fault.
	progressTimeout = time.Minute
)

// TestCluster runs the deployment of compose.yaml (3 nats-servers in a
// JetStream cluster, 3 eddy nodes in zones a, b, c, streams of 3 replicas)
// under a bank load from a plain JetStream producer, and puts it through
// faults one after the other; after each, every account must be exactly
// what the producer's model says.
func TestCluster(t *testing.T) {
	start := time.Now()
	c := newDockerCluster(t, partitions)
	t.Logf("cluster up in %v", time.Since(start).Round(100*time.Millisecond))
	bank := newBankProducer(t, c, partitions, accounts)
	w := watchProgress(c)

	t.Run("NATSServerCutOffThenKilled", func(t *testing.T) {
		c.t, bank.t = t, t
		// The server no node is given, so no node is connected to it: a
		// node whose server is cut off does not find out for minutes
		// (NATSServerOfNodesCutOff).
		victim := c.nats[spareNATS]
		if c.natsServer(func(nodes int) bool { return nodes == 0 }) != victim {
			t.Fatalf("a node is connected to %s, which no node was given", victim.name)
		}
		cutOffThenKilled(t, c, bank, w, victim, 1)
	})

	t.Run("FullStopAndStart", func(t *testing.T) {
		c.t, bank.t = t, t
		loadStart, sentAtStart := time.Now(), bank.transfers()
		bank.startLoad(rate, 2)
		c.waitFor(progressTimeout, "every partition committing under load, 500 transfers", func(context.Context) error {
			if n := bank.transfers() - sentAtStart; n < 500 {
				return fmt.Errorf("%d transfers", n)
			}
			return w.committedSince(loadStart)
		})
		before := bank.waitInvariants(c, c.nodes[0], invariantsTimeout)
		sentBeforeStop := bank.transfers()

		// Stop everything: the nodes with SIGTERM, then NATS.
		stopped := time.Now()
		parallel(t, c.nodes, "stop", "-t", fmt.Sprint(int(stopTimeout.Seconds())))
		for _, n := range c.nodes {
			// Known: with every node stopping at once, one may wait 30 s
			// for a leave nobody confirms and exit 1 ("node run: context
			// deadline exceeded"). Its state is intact; reported, not failed.
			if code := c.exitCode(n); code != "0" {
				t.Logf("PRODUCT PROBLEM: %s exited with %s after SIGTERM", n.name, code)
			}
		}
		t.Logf("nodes stopped in %v", time.Since(stopped).Round(100*time.Millisecond))
		parallel(t, c.nats, "stop", "-t", fmt.Sprint(int(stopTimeout.Seconds())))

		// Start everything again on the same volumes.
		restarted := time.Now()
		c.startNATS()
		c.startNodes()
		t.Logf("cluster restarted in %v; longest gap between commits, the stop included: %s",
			time.Since(restarted).Round(100*time.Millisecond), w.gaps())

		// State intact: every account as it was before the stop, through
		// every node.
		for _, n := range c.nodes {
			after := bank.waitInvariants(c, n, invariantsTimeout)
			for a, want := range before {
				if after[a] != want {
					t.Fatalf("through %s after the restart, %s is %+v; before the stop %+v", n.name, a, after[a], want)
				}
			}
		}

		// Processing resumes.
		resumed := time.Now()
		bank.startLoad(rate, 3)
		c.waitFor(progressTimeout, "every partition committing after the restart, 500 more transfers", func(context.Context) error {
			if n := bank.transfers() - sentBeforeStop; n < 500 {
				return fmt.Errorf("%d transfers since the restart", n)
			}
			return w.committedSince(resumed)
		})
		bank.waitInvariants(c, c.nodes[2], invariantsTimeout)
		t.Logf("resumed: %d transfers in all; longest wait for an acknowledgement %v; longest gap between commits: %s",
			bank.transfers(), bank.resetStall().Round(10*time.Millisecond), w.gaps())
	})

	// The same with the server the nodes are connected to: a node notices
	// its connection is dead by its pings (a second apart, 3 unanswered;
	// the cut sends no reset) and moves to another server of its list.
	t.Run("NATSServerOfNodesCutOff", func(t *testing.T) {
		c.t, bank.t = t, t
		victim := c.natsServer(func(nodes int) bool { return nodes > 0 })
		if victim == nil {
			t.Fatal("no nats-server carries a node's connection")
		}
		cutOffThenKilled(t, c, bank, w, victim, 4)
	})
}

// cutOffThenKilled cuts nats-server victim off the data network under load
// for 10 s, then kills it, then starts it and connects it again: every
// partition commits throughout, after the cut and after the kill, and the
// accounts end exactly as the model says. seed seeds the load (and its
// message ids: a seed is used once a run).
func cutOffThenKilled(t *testing.T, c *dockerCluster, bank *bankProducer, w *progress, victim *container, seed uint64) {
	t.Cleanup(func() {
		if t.Failed() { // leave NATS whole for the next scenario
			_, _ = docker("start", victim.name)
			_, _ = docker("network", "connect", "--ip", victim.ips[c.data], c.data.name, victim.name)
		}
	})
	loadStart := time.Now()
	bank.startLoad(rate, seed)
	c.waitFor(progressTimeout, "every partition committing under load", func(context.Context) error {
		return w.committedSince(loadStart)
	})
	w.gaps()
	bank.resetStall()

	// Cut the server off the data network: its peers and the
	// clients connected to it lose it without a word.
	names, err := c.clients(context.Background(), victim)
	t.Logf("%s's clients before the cut: %q %v", victim.name, names, err)
	cut := time.Now()
	c.disconnect(victim, c.data)
	c.waitFor(progressTimeout, victim.name+" cut off for 10 s, every partition committing 5 s after the cut", func(context.Context) error {
		if d := time.Since(cut); d < 10*time.Second {
			return fmt.Errorf("cut off for %v", d.Round(time.Second))
		}
		return w.committedSince(cut.Add(5 * time.Second))
	})
	t.Logf("while cut off: longest wait for an acknowledgement %v; longest gap between commits: %s",
		bank.resetStall().Round(10*time.Millisecond), w.gaps())

	// Then kill it: the streams have two replicas left of three.
	killed, sentAtKill := time.Now(), bank.transfers()
	c.kill(victim)
	c.waitFor(progressTimeout, victim.name+" killed, every partition committing and 300 more transfers", func(context.Context) error {
		if n := bank.transfers() - sentAtKill; n < 300 {
			return fmt.Errorf("%d transfers acknowledged since the kill", n)
		}
		return w.committedSince(killed)
	})
	t.Logf("killed: longest wait for an acknowledgement %v; longest gap between commits: %s",
		bank.resetStall().Round(10*time.Millisecond), w.gaps())

	// Bring it back: started isolated, then reconnected, it catches
	// up with its peers.
	c.start(victim)
	c.reconnect(victim, c.data)
	c.waitNATSReady(c.nats...)

	bank.waitInvariants(c, c.nodes[0], invariantsTimeout)
	t.Logf("back: %d transfers in all; longest wait for an acknowledgement %v; longest gap between commits: %s",
		bank.transfers(), bank.resetStall().Round(10*time.Millisecond), w.gaps())
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
