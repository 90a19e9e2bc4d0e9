package eddy_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/examples/apps"
	"github.com/eddyrt/eddy/internal/natstest"
	"github.com/eddyrt/eddy/internal/testkit"
)

// Resetting an actor type refuses while a node runs it; then it deletes the
// type's changelogs and snapshots (a dry run only lists them), leaves its input and
// dead-letter streams, and can run twice. The next node to run the type
// discards its local stores, tied to the deleted changelogs, processes the
// input again from its first event, and ends with the same state.
func TestResetReprocessesTheInputFromTheStart(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	dataDir := t.TempDir()
	config := func(id, dir string) eddy.Config {
		cfg := eddy.DefaultConfig()
		cfg.NodeID, cfg.DataDir, cfg.NATSURL, cfg.HTTPAddr = id, dir, srv.URL(), ""
		cfg.SnapshotEvery = 1 // a snapshot bucket to delete too
		cfg.Logger = testkit.Logger(t)
		return cfg
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	node := runNode(t, config("n1", dataDir), apps.Bank(2))
	deposits := map[string]int64{"alice": 40, "bob": 2, "carol": 7}
	for who, amount := range deposits {
		if err := node.Client().Ask(ctx, apps.BankType, who, apps.Op{Kind: "deposit", Amount: amount}, nil); err != nil {
			t.Fatal(err)
		}
	}

	tool := runNode(t, config("tool", t.TempDir()))
	if _, err := tool.Reset(ctx, apps.BankType, false); !errors.Is(err, eddy.ErrTypeRunning) || !strings.Contains(err.Error(), "n1") {
		t.Fatalf("reset while n1 runs the bank: %v, want ErrTypeRunning naming n1", err)
	}
	if _, err := node.Reset(ctx, apps.BankType, true); !errors.Is(err, eddy.ErrTypeRunning) {
		t.Fatalf("reset from the node that runs the bank: %v, want ErrTypeRunning", err)
	}
	if err := node.Stop(ctx); err != nil {
		t.Fatal(err)
	}

	testkit.WaitFor(t, 10*time.Second, "a snapshot of the bank", func() bool {
		_, err := js.Stream(ctx, "OBJ_EDDY_SNAP_bank")
		return err == nil
	})
	changelogs := []string{"EDDY_CL_bank_0", "EDDY_CL_bank_1", "OBJ_EDDY_SNAP_bank"}
	left := []string{"bank", "bank_dlq"}
	dry, err := tool.Reset(ctx, apps.BankType, true)
	if err != nil || !dry.DryRun || !slices.Equal(dry.Deleted, changelogs) || !slices.Equal(dry.Left, left) {
		t.Fatalf("dry run: %+v, %v; want to delete %v and leave %v", dry, err, changelogs, left)
	}
	if _, err := js.Stream(ctx, changelogs[0]); err != nil {
		t.Fatalf("a dry run deleted %s: %v", changelogs[0], err)
	}
	done, err := tool.Reset(ctx, apps.BankType, false)
	if err != nil || done.DryRun || !slices.Equal(done.Deleted, changelogs) {
		t.Fatalf("reset: %+v, %v; want %v deleted", done, err, changelogs)
	}
	for _, name := range changelogs {
		if _, err := js.Stream(ctx, name); err == nil {
			t.Fatalf("%s is still there after the reset", name)
		}
	}
	again, err := tool.Reset(ctx, apps.BankType, false)
	if err != nil || len(again.Deleted) != 0 || !slices.Equal(again.Left, left) {
		t.Fatalf("second reset: %+v, %v; want nothing deleted", again, err)
	}

	reg := prometheus.NewRegistry()
	cfg := config("n1", dataDir)
	cfg.Registerer = reg
	restarted := runNode(t, cfg, apps.Bank(2))
	for who, amount := range deposits {
		testkit.WaitFor(t, 20*time.Second, who+"'s deposit processed again", func() bool {
			var acc apps.Account
			err := restarted.Query(ctx, apps.BankType, who, &acc)
			return err == nil && acc.Deposited == amount && acc.Balance == amount
		})
	}
	if n := counterSum(t, reg, "eddy_partition_store_discards_total"); n < 1 {
		t.Errorf("%v local stores discarded; want the stores of the deleted changelogs gone", n)
	}
}

// counterSum is the sum of a counter family of reg (0 when it has none).
func counterSum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// Node.Snapshot asks the nodes running a type for a snapshot of each
// partition now, with periodic snapshots off, from any node.
func TestSnapshotOnDemand(t *testing.T) {
	srv := natstest.Start(t)
	config := func(id string) eddy.Config {
		cfg := eddy.DefaultConfig()
		cfg.NodeID, cfg.DataDir, cfg.NATSURL, cfg.HTTPAddr = id, t.TempDir(), srv.URL(), ""
		cfg.Logger = testkit.Logger(t)
		return cfg
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	node := runNode(t, config("n1"), apps.Bank(2))
	for _, who := range []string{"alice", "bob", "carol", "dave"} {
		if err := node.Client().Ask(ctx, apps.BankType, who, apps.Op{Kind: "deposit", Amount: 5}, nil); err != nil {
			t.Fatal(err)
		}
	}
	tool := runNode(t, config("tool"))
	all, err := tool.Snapshot(ctx, apps.BankType, -1)
	if err != nil || len(all) != 2 {
		t.Fatalf("snapshot of every partition: %+v, %v; want 2", all, err)
	}
	status, err := node.Status()
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range all {
		if r.Partition != i || r.Node != "n1" || r.Err != "" || r.Snapshot.ChangelogSeq != status[i].ChangelogSeq || r.Snapshot.Files == 0 {
			t.Errorf("partition %d: %+v; want a snapshot at changelog sequence %d by n1", i, r, status[i].ChangelogSeq)
		}
	}
	one, err := node.Snapshot(ctx, apps.BankType, 1)
	if err != nil || len(one) != 1 || one[0].Partition != 1 || !one[0].Snapshot.Created.Equal(all[1].Snapshot.Created) {
		t.Fatalf("snapshot of partition 1 with nothing new: %+v, %v; want the same one", one, err)
	}
	if _, err := tool.Snapshot(ctx, "nothing", -1); !errors.Is(err, eddy.ErrNotFound) {
		t.Fatalf("snapshot of a type without partitions: %v, want ErrNotFound", err)
	}
}
