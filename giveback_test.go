package eddy_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/examples/apps"
	"github.com/eddyrt/eddy/internal/natstest"
	"github.com/eddyrt/eddy/internal/testkit"
	"github.com/eddyrt/eddy/partition"
)

// intrude writes the epoch record of another owner at epoch into the
// changelog of typ/p, after whatever it holds, as a process that believes
// it owns the partition would once it has restored it (a cluster whose Raft
// state was reset while NATS kept the changelogs, say).
func intrude(t *testing.T, ctx context.Context, nc *nats.Conn, typ string, p int, epoch uint64) {
	t.Helper()
	s := changelog.NewSubjects(typ, p)
	for {
		last, err := changelog.LastSequence(ctx, nc, s)
		if err != nil {
			t.Fatal(err)
		}
		m, _, err := changelog.ReadLastMeta(ctx, nc, s)
		if err != nil || m.Seq != last {
			continue // a commit between the two reads
		}
		rec := changelog.Meta{Offset: m.Offset, Forwarded: m.Forwarded, Epoch: epoch, Owner: "intruder"}
		w := changelog.NewWriter(nc, s, changelog.Tail{Seq: last, Batch: m.Batch}, 0, 0)
		_, err = w.Commit(ctx, []changelog.Record{{Kind: changelog.KindMeta, Meta: rec}})
		w.Close()
		if err == nil {
			return
		}
		if !errors.Is(err, changelog.ErrFenced) {
			t.Fatal(err)
		}
	}
}

// accountIn returns an account name of partition p among n.
func accountIn(p, n int) string {
	for i := 0; ; i++ {
		if a := fmt.Sprintf("acct-%02d", i); partition.Of(a, n) == p {
			return a
		}
	}
}

// A single node whose changelog gains a newer epoch of another owner (a
// second process writing the same partitions) stops that partition for
// good, and says so: its status names the other owner, and a query of one
// of its keys answers 503 at once with the reason. The other partitions go on.
func TestFencedPartitionIsVisible(t *testing.T) {
	const partitions = 2
	node, client, _ := startNode(t, apps.Bank(partitions))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	fenced, other := accountIn(0, partitions), accountIn(1, partitions)
	var bal int64
	for _, a := range []string{fenced, other} {
		if err := client.Ask(ctx, apps.BankType, a, apps.Op{Kind: "deposit", Amount: 10}, &bal); err != nil {
			t.Fatal(err)
		}
	}
	nc, err := nats.Connect(node.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	intrude(t, ctx, nc, apps.BankType, 0, 100)
	if err := client.Send(ctx, apps.BankType, fenced, apps.Op{Kind: "deposit", Amount: 1}); err != nil {
		t.Fatal(err)
	}
	var st eddy.PartitionStatus
	testkit.WaitFor(t, 30*time.Second, "bank/0 fenced", func() bool {
		ps, _ := node.Status()
		st = ps[0]
		return st.State == partition.StateFenced
	})
	if !strings.Contains(st.Err, "intruder") || !strings.Contains(st.Err, "100") {
		t.Errorf("status error %q does not name the owner and epoch that fenced it", st.Err)
	}
	start := time.Now()
	var acc apps.Account
	if err := node.Query(ctx, apps.BankType, fenced, &acc); !errors.Is(err, eddy.ErrUnavailable) || time.Since(start) > time.Second {
		t.Errorf("query of a fenced partition: %v after %v; want ErrUnavailable at once", err, time.Since(start))
	}
	resp, err := http.Get("http://" + node.HTTPAddr() + "/v1/state/bank/" + fenced)
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]string
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body["error"], "fenced") {
		t.Errorf("GET a key of a fenced partition: %d %v; want 503 naming why", resp.StatusCode, body)
	}
	resp, err = http.Get("http://" + node.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`eddy_partition_state{partition="0",state="fenced",type="bank"} 1`,
		`eddy_partition_state{partition="0",state="running",type="bank"} 0`,
		`eddy_partition_state{partition="1",state="running",type="bank"} 1`,
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if err := client.Ask(ctx, apps.BankType, other, apps.Op{Kind: "deposit", Amount: 1}, &bal); err != nil || bal != 11 {
		t.Errorf("the other partition: balance %d, %v", bal, err)
	}
}

// In a cluster, a partition fenced at the epoch its assignment gives it is
// given back to the assignor, which places it again at an epoch above the
// changelog's; it runs again, and the bank loses nothing.
func TestClusterGivesBackAFencedPartition(t *testing.T) {
	srv := natstest.Start(t)
	const partitions = 4
	bank := apps.Bank(partitions)
	n1 := startMember(t, srv.URL(), "n1", "", nil, bank)
	n2 := startMember(t, srv.URL(), "n2", n1.GossipAddr(), nil, bank)
	n3 := startMember(t, srv.URL(), "n3", n1.GossipAddr(), nil, bank)
	nodes := []*eddy.Node{n1, n2, n3}
	waitSettled(t, nodes, partitions)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	accounts, transfers := fundBank(t, ctx, srv, 12, 5)
	transfers(100)
	waitBankHolds(t, ctx, n1, accounts, 100)

	st, err := n1.Cluster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before := st.Partitions[0]
	nc, _ := srv.Connect(t)
	intrude(t, ctx, nc, apps.BankType, 0, before.Epoch+5)
	transfers(100) // the owner's next commit meets the intruder's record
	var after eddy.AssignmentStatus
	testkit.WaitFor(t, 30*time.Second, "bank/0 placed again above the intruder's epoch and running", func() bool {
		st, err := n1.Cluster(ctx)
		if err != nil {
			return false
		}
		after = st.Partitions[0]
		return after.Epoch > before.Epoch+5 && after.State == string(partition.StateRunning)
	})
	t.Logf("bank/0: %s at epoch %d, then %s at epoch %d", before.Active, before.Epoch, after.Active, after.Epoch)
	waitSettled(t, nodes, partitions)
	transfers(100)
	waitBankHolds(t, ctx, n1, accounts, 300)
}

// commitsFail is a connection on which every changelog commit fails (no
// responders): a node whose partitions cannot commit while NATS answers
// everything else.
type commitsFail struct{ *nats.Conn }

func (c commitsFail) PublishMsg(m *nats.Msg) error {
	if m.Reply == "" {
		return nil // a part
	}
	return c.Conn.PublishMsg(&nats.Msg{Subject: m.Reply, Header: nats.Header{"Status": []string{"503"}}})
}

// A partition that keeps failing on its node while that node is connected
// to NATS (here: n2's commits never land) is given back after
// Config.GiveBackAfter, for the node's own fault: the assignor places it on
// another node and never hands it to n2 again (not until n2 restarts), so
// it does not flap. Balance still hands n2 the other partitions, one at a
// time, and n2 gives each back once; then n2 holds no active for good,
// every partition runs on n1 or n3, and the bank loses nothing.
func TestClusterGivesBackAPartitionThatKeepsFailing(t *testing.T) {
	const partitions = 4
	g := startGiveBackCluster(t, partitions, 9)
	srv, n1, fast, bank, ctx, accounts, transfers := g.srv, g.n1, g.fast, g.bank, g.ctx, g.accounts, g.transfers

	// n2 joins; the balancer hands it its share, which it cannot commit.
	nc, _ := srv.Connect(t)
	broken := func(c *eddy.Config) {
		fast(c)
		eddy.SetHooks(c, partition.Hooks{Conn: commitsFail{nc}})
	}
	startMember(t, srv.URL(), "n2", n1.GossipAddr(), broken, bank)

	// Sample the assignment until n2 has held nothing, active or moving
	// there, for quiet: a partition that left n2 (given back) must never
	// be handed to it again, nor moved towards it.
	const quiet = 3 * time.Second
	var (
		onN2   = map[int]uint64{} // the epoch each partition was active on n2 at
		left   = map[int]bool{}   // the partitions that left n2
		last   eddy.ClusterStatus
		joined = time.Now()
		idle   = joined // since when n2 has held nothing
	)
	for time.Since(idle) < quiet || len(left) == 0 {
		if time.Since(joined) > 30*time.Second {
			t.Fatalf("n2 still holds partitions %v after %s (left %v)", onN2, time.Since(joined).Round(time.Millisecond), left)
		}
		st, err := n1.Cluster(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range st.Partitions {
			switch {
			case left[p.Partition] && (p.Active == "n2" || p.MovingTo == "n2"):
				t.Fatalf("bank/%d left n2, and is handed back to it: active %s at epoch %d, moving to %q", p.Partition, p.Active, p.Epoch, p.MovingTo)
			case p.Active == "n2":
				onN2[p.Partition] = p.Epoch
				idle = time.Now()
			case p.MovingTo == "n2":
				idle = time.Now()
			case onN2[p.Partition] != 0:
				t.Logf("bank/%d: n2 gave it back at epoch %d after %s; now on %s at epoch %d", p.Partition, onN2[p.Partition], time.Since(joined).Round(time.Millisecond), p.Active, p.Epoch)
				left[p.Partition] = true
				delete(onN2, p.Partition)
			}
		}
		last = st
		time.Sleep(50 * time.Millisecond)
	}
	// Every partition went to n2 once and left it: with n1 and n3 holding two
	// each, any partition n2 did not give back would be balanced onto it.
	if len(left) != partitions {
		t.Fatalf("partitions that left n2: %v; want all %d, each once", left, partitions)
	}
	t.Logf("n2 held nothing for %s after giving back all %d partitions, %s after it joined", quiet, partitions, time.Since(joined).Round(time.Millisecond))
	testkit.WaitFor(t, 30*time.Second, "every partition running on n1 or n3, with no replica on n2", func() bool {
		st, err := n1.Cluster(ctx)
		if err != nil {
			return false
		}
		for _, p := range st.Partitions {
			if (p.Active != "n1" && p.Active != "n3") || p.State != string(partition.StateRunning) || p.MovingTo != "" {
				return false
			}
			for _, r := range p.Replicas {
				if r.Node == "n2" {
					return false
				}
			}
		}
		last = st
		return true
	})
	for _, p := range last.Partitions {
		t.Logf("bank/%d: %s at epoch %d, %s", p.Partition, p.Active, p.Epoch, p.State)
		if !slices.Contains(p.Avoid, "n2") {
			t.Errorf("bank/%d: the cluster status does not show that n2 is avoided: %v", p.Partition, p.Avoid)
		}
	}
	transfers(50)
	waitBankHolds(t, ctx, n1, accounts, 100)
}

// A node whose hot replicas keep failing (a broken disk) gives them back:
// the assignor moves them to other nodes, cancels the warm-up moves towards
// the node (which would wait for those replicas forever), and does not
// place the partitions there again until the node restarts.
func TestClusterGivesBackAReplicaThatKeepsFailing(t *testing.T) {
	const partitions = 4
	g := startGiveBackCluster(t, partitions, 11)
	srv, n1, fast, bank, ctx, accounts, transfers := g.srv, g.n1, g.fast, g.bank, g.ctx, g.accounts, g.transfers

	// n2 joins; its replicas (warm-up ones included) cannot open their stores.
	broken := func(c *eddy.Config) {
		fast(c)
		eddy.SetHooks(c, partition.Hooks{ReplicaStarting: func() error { return errors.New("disk broken") }})
	}
	startMember(t, srv.URL(), "n2", n1.GossipAddr(), broken, bank)
	joined := time.Now()
	var last eddy.ClusterStatus
	testkit.WaitFor(t, 30*time.Second, "the partitions placed on n2 avoiding it, every partition running on n1 or n3 with no replica or move on n2", func() bool {
		st, err := n1.Cluster(ctx)
		if err != nil {
			return false
		}
		avoided := 0
		for _, p := range st.Partitions {
			if slices.Contains(p.Avoid, "n2") {
				avoided++
			}
			if p.Active == "n2" || p.MovingTo != "" || p.State != string(partition.StateRunning) || len(p.Replicas) == 0 {
				return false
			}
			for _, r := range p.Replicas {
				if r.Node == "n2" {
					return false
				}
			}
		}
		last = st
		return avoided > 0
	})
	t.Logf("n2's replicas given back and placed elsewhere %s after it joined", time.Since(joined).Round(time.Millisecond))
	for _, p := range last.Partitions {
		t.Logf("bank/%d: %s at epoch %d, replicas %v, avoids %v", p.Partition, p.Active, p.Epoch, p.Replicas, p.Avoid)
	}
	transfers(50)
	waitBankHolds(t, ctx, n1, accounts, 100)
}

// giveBackCluster is n1 and n3 running the bank with a give-back after 1 s,
// funded and past 50 transfers, for a broken n2 to join.
type giveBackCluster struct {
	srv       *natstest.Server
	n1        *eddy.Node
	fast      func(*eddy.Config)
	bank      eddy.ActorType
	ctx       context.Context
	accounts  []string
	transfers func(n int)
}

func startGiveBackCluster(t *testing.T, partitions int, seed uint64) giveBackCluster {
	t.Helper()
	g := giveBackCluster{srv: natstest.Start(t), bank: apps.Bank(partitions),
		fast: func(c *eddy.Config) { c.GiveBackAfter = time.Second }}
	g.n1 = startMember(t, g.srv.URL(), "n1", "", g.fast, g.bank)
	n3 := startMember(t, g.srv.URL(), "n3", g.n1.GossipAddr(), g.fast, g.bank)
	waitSettled(t, []*eddy.Node{g.n1, n3}, partitions)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	g.ctx = ctx
	g.accounts, g.transfers = fundBank(t, ctx, g.srv, 12, seed)
	g.transfers(50)
	waitBankHolds(t, ctx, g.n1, g.accounts, 50)
	return g
}
