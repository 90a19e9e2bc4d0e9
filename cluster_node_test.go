package eddy_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/examples/apps"
	"github.com/eddyrt/eddy/internal/natstest"
	"github.com/eddyrt/eddy/internal/testkit"
)

// startMember starts a cluster member on loopback (free ports) against a
// shared NATS server; the first member bootstraps, the others join it.
func startMember(t *testing.T, natsURL, id, join string, mutate func(*eddy.Config), types ...eddy.ActorType) *eddy.Node {
	t.Helper()
	cfg := eddy.DefaultConfig()
	cfg.NodeID, cfg.DataDir, cfg.NATSURL, cfg.HTTPAddr = id, t.TempDir(), natsURL, "127.0.0.1:0"
	cfg.GossipAddr, cfg.RaftAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Logger = testkit.LoggerAt(t, slog.LevelInfo)
	cfg.LeaveTimeout = 20 * time.Second
	if join == "" {
		cfg.Bootstrap = true
	} else {
		cfg.Join = []string{join}
	}
	if mutate != nil {
		mutate(&cfg)
	}
	return runNode(t, cfg, types...)
}

// settled reports whether every partition is active on one of nodes, with
// the actives balanced, and each node runs exactly its actives.
func settled(nodes []*eddy.Node, partitions int) error {
	st, err := nodes[0].Cluster(context.Background())
	if err != nil {
		return err
	}
	ids := map[string]*eddy.Node{}
	for _, n := range nodes {
		ids[n.ID()] = n
	}
	perNode := map[string]int{}
	for _, p := range st.Partitions {
		if ids[p.Active] == nil || p.MovingTo != "" {
			return fmt.Errorf("%s/%d: active %q moving to %q", p.Type, p.Partition, p.Active, p.MovingTo)
		}
		perNode[p.Active]++
	}
	if len(st.Partitions) != partitions {
		return fmt.Errorf("%d partitions assigned", len(st.Partitions))
	}
	for id, n := range ids {
		want := perNode[id]
		if want > (partitions+len(nodes)-1)/len(nodes) {
			return fmt.Errorf("%s holds %d actives", id, want)
		}
		ps, err := n.Status()
		if err != nil {
			return err
		}
		running := 0
		for _, p := range ps {
			if p.Running {
				running++
			}
		}
		if running != want || len(ps) != want {
			return fmt.Errorf("%s runs %d of %d partition actors (%d assigned)", id, running, len(ps), want)
		}
	}
	return nil
}

func waitSettled(t *testing.T, nodes []*eddy.Node, partitions int) time.Duration {
	t.Helper()
	start := time.Now()
	var err error
	for time.Since(start) < 60*time.Second {
		if err = settled(nodes, partitions); err == nil {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("cluster did not settle: %v", err)
	return 0
}

// bankTotals queries every account through node (routed to each owner) and
// returns the sum of balances, deposits, debits and credits.
func bankTotals(ctx context.Context, node *eddy.Node, accounts []string) (apps.Account, error) {
	var sum apps.Account
	for _, a := range accounts {
		var acc apps.Account
		if err := node.Query(ctx, apps.BankType, a, &acc); err != nil {
			return sum, fmt.Errorf("query %s: %w", a, err)
		}
		sum.Balance += acc.Balance
		sum.Deposited += acc.Deposited
		sum.Debits += acc.Debits
		sum.Credits += acc.Credits
		sum.Rejected += acc.Rejected
	}
	return sum, nil
}

// fundBank deposits 100 into each of n accounts through a client of srv,
// and returns them with a function that sends n random transfers between
// them (seeded by seed).
func fundBank(t *testing.T, ctx context.Context, srv *natstest.Server, n int, seed uint64) ([]string, func(n int)) {
	t.Helper()
	nc, _ := srv.Connect(t)
	client, err := eddy.NewClient(nc)
	if err != nil {
		t.Fatal(err)
	}
	accounts := make([]string, n)
	for i := range accounts {
		accounts[i] = fmt.Sprintf("acct-%02d", i)
		if err := client.Send(ctx, apps.BankType, accounts[i], apps.Op{Kind: "deposit", Amount: 100}); err != nil {
			t.Fatal(err)
		}
	}
	rng := rand.New(rand.NewPCG(seed, seed+1))
	transfers := func(n int) {
		for range n {
			from, to := accounts[rng.IntN(len(accounts))], accounts[rng.IntN(len(accounts))]
			if err := client.Send(ctx, apps.BankType, from, apps.Op{Kind: "transfer", Amount: 1 + rng.Int64N(20), To: to}); err != nil {
				t.Error(err)
				return
			}
		}
	}
	return accounts, transfers
}

// waitBankHolds waits up to 30 s, asking node, until the bank's invariants
// hold after transfers transfers: the balances add up to the deposits (100
// an account), and each transfer applied was credited once.
func waitBankHolds(t *testing.T, ctx context.Context, node *eddy.Node, accounts []string, transfers int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		sum, err := bankTotals(ctx, node, accounts)
		if err == nil && sum.Balance == 100*int64(len(accounts)) && sum.Debits == sum.Credits && sum.Debits+sum.Rejected == transfers {
			t.Logf("totals: %+v", sum)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("bank invariants after %d transfers: %+v, %v", transfers, sum, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Three members share the bank's partitions; queries on any member reach
// the owner; a graceful leave under load hands the leaving member's
// partitions over and loses nothing.
func TestClusterMembersShareAndHandOver(t *testing.T) {
	srv := natstest.Start(t)
	const partitions = 6
	bank := apps.Bank(partitions)
	n1 := startMember(t, srv.URL(), "n1", "", nil, bank)
	n2 := startMember(t, srv.URL(), "n2", n1.GossipAddr(), nil, bank)
	n3 := startMember(t, srv.URL(), "n3", n1.GossipAddr(), nil, bank)
	nodes := []*eddy.Node{n1, n2, n3}
	t.Logf("settled in %v", waitSettled(t, nodes, partitions))

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	accounts, transfers := fundBank(t, ctx, srv, 20, 1)
	transfers(300)

	// n2 leaves while transfers go on.
	done := make(chan struct{})
	go func() {
		defer close(done)
		transfers(300)
	}()
	start := time.Now()
	if err := n2.Stop(ctx); err != nil {
		t.Fatalf("leave: %v", err)
	}
	t.Logf("n2 left in %v", time.Since(start))
	<-done
	nodes = []*eddy.Node{n1, n3}
	waitSettled(t, nodes, partitions)

	// Every credit lands: balances add up to the deposits, and each transfer
	// applied was credited once.
	waitBankHolds(t, ctx, n3, accounts, 600)

	// Reads that accept a bounded staleness are served by a hot replica on
	// the node asked, when it has one within the bound, and see the owner's
	// committed state (nothing is in flight any more); the rest by the owner.
	fromReplica := 0
	for _, n := range nodes {
		for _, a := range accounts {
			var owner, stale apps.Account
			if err := n.Query(ctx, apps.BankType, a, &owner); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(10 * time.Second)
			for {
				var served eddy.Served
				err := n.Query(ctx, apps.BankType, a, &stale, eddy.MaxStaleness(5*time.Second), eddy.ServedBy(&served))
				byReplica := served.Replica
				if err != nil {
					t.Fatal(err)
				}
				if stale == owner {
					if byReplica {
						fromReplica++
					}
					break
				}
				if !byReplica || time.Now().After(deadline) {
					t.Fatalf("%s: %s read %+v (replica: %v), the owner has %+v", n.ID(), a, stale, byReplica, owner)
				}
				time.Sleep(20 * time.Millisecond) // the replica is still applying the owner's last commits
			}
		}
	}
	if fromReplica == 0 {
		t.Error("no read was served by a replica")
	}
	t.Logf("%d of %d bounded-staleness reads served by a replica", fromReplica, len(nodes)*len(accounts))
}

// startZones starts members n1, n2, ... in the given zones, n1 first and
// the others joining it, each running typ.
func startZones(t *testing.T, url string, zones []string, typ eddy.ActorType) []*eddy.Node {
	t.Helper()
	var nodes []*eddy.Node
	for i, zone := range zones {
		seed := ""
		if i > 0 {
			seed = nodes[0].GossipAddr()
		}
		inZone := func(c *eddy.Config) { c.Zone = zone }
		nodes = append(nodes, startMember(t, url, "n"+strconv.Itoa(i+1), seed, inZone, typ))
	}
	return nodes
}

// With two zones, every partition keeps a replica outside its active's
// zone, so losing a whole zone loses no partition's only warm copy.
func TestClusterZoneSpread(t *testing.T) {
	srv := natstest.Start(t)
	const partitions = 8
	bank := apps.Bank(partitions)
	bank.ReplicationFactor = 2
	zones := map[string]string{"n1": "a", "n2": "a", "n3": "a", "n4": "b"}
	nodes := startZones(t, srv.URL(), []string{"a", "a", "a", "b"}, bank)
	n1 := nodes[0]
	waitSettled(t, nodes, partitions)
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := n1.Cluster(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var bad []string
		for _, p := range st.Partitions {
			same := len(p.Replicas) == 2
			for _, r := range p.Replicas {
				same = same && zones[r.Node] == zones[p.Active]
			}
			if len(p.Replicas) != 2 || same {
				bad = append(bad, fmt.Sprintf("%d: active %s, replicas %v", p.Partition, p.Active, p.Replicas))
			}
		}
		if len(bad) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("partitions without a replica in another zone, or short of replicas: %v", bad)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A type without a changelog fails over by rebuilding: a member stops as a
// crash would look to the others (no leave, no handover), and the survivors
// that take its partitions, with no copy of their stores, replay the input
// stream into them. The bank's invariants hold across it.
func TestClusterFailoverRebuildsStoresWithoutChangelog(t *testing.T) {
	srv := natstest.Start(t)
	const partitions = 4
	bank := apps.Bank(partitions)
	bank.NoChangelog = true
	noLeave := func(c *eddy.Config) { c.LeaveTimeout = 0 }
	n1 := startMember(t, srv.URL(), "n1", "", noLeave, bank)
	n2 := startMember(t, srv.URL(), "n2", n1.GossipAddr(), noLeave, bank)
	n3 := startMember(t, srv.URL(), "n3", n1.GossipAddr(), noLeave, bank)
	waitSettled(t, []*eddy.Node{n1, n2, n3}, partitions)
	st, err := n1.Cluster(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Partitions {
		if len(p.Replicas) != 0 {
			t.Fatalf("partition %d of a type without a changelog has replicas %v", p.Partition, p.Replicas)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	accounts, transfers := fundBank(t, ctx, srv, 12, 3)
	transfers(200)
	waitBankHolds(t, ctx, n1, accounts, 200)

	if err := n2.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, []*eddy.Node{n1, n3}, partitions)
	transfers(100)
	waitBankHolds(t, ctx, n3, accounts, 300)
	// n2's partitions were rebuilt from their input, not reprocessed as new.
	if n := rebuiltEvents(t, n1) + rebuiltEvents(t, n3); n == 0 {
		t.Fatal("no input events were replayed to rebuild n2's partitions")
	}
}
