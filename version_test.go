package eddy_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/examples/apps"
	"github.com/eddyrt/eddy/internal/natstest"
	"github.com/eddyrt/eddy/internal/testkit"
	"github.com/eddyrt/eddy/partition"
)

// bankV2 is the bank at state version 2: its Migrate adds a field with a
// default to every account (the bank's handler ignores it) and counts its
// calls per account.
func bankV2(partitions int, mu *sync.Mutex, calls map[string]int) eddy.ActorType {
	t := apps.Bank(partitions)
	t.StateVersion = 2
	t.Migrate = func(store string, key []byte, from int, value []byte) ([]byte, error) {
		if store != eddy.DefaultStore || from != 1 {
			return nil, fmt.Errorf("migrate %s/%s from %d", store, key, from)
		}
		var acc map[string]any
		if err := msgpack.Unmarshal(value, &acc); err != nil {
			return nil, err
		}
		acc["tier"] = "basic"
		mu.Lock()
		calls[string(key)]++
		mu.Unlock()
		return msgpack.Marshal(acc)
	}
	return t
}

// A rolling upgrade of the bank from state version 1 to 2 with Migrate:
// n1 runs version 1, n2 joins with version 2 and takes its share of the
// partitions, migrating them; a partition whose state is of version 2 never
// runs on n1 (it refuses such state and gives the partition back, avoided);
// then n1 leaves, and every partition ends on n2 at version 2. Under
// transfers throughout, the bank loses nothing and doubles nothing, and each
// account's value was migrated once.
func TestRollingUpgradeWithMigrate(t *testing.T) {
	srv := natstest.Start(t)
	const partitions = 4
	var (
		mu    sync.Mutex
		calls = map[string]int{}
	)
	n1 := startMember(t, srv.URL(), "n1", "", nil, apps.Bank(partitions))
	waitSettled(t, []*eddy.Node{n1}, partitions)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	accounts, transfers := fundBank(t, ctx, srv, 12, 21)
	transfers(100)
	waitBankHolds(t, ctx, n1, accounts, 100)

	nc, _ := srv.Connect(t)
	version := func(p int) int {
		m, _, err := changelog.ReadLastMeta(ctx, nc, changelog.NewSubjects(apps.BankType, p))
		if err != nil {
			t.Fatal(err)
		}
		return max(m.Version, m.Migrating, 1)
	}

	n2 := startMember(t, srv.URL(), "n2", n1.GossipAddr(), nil, bankV2(partitions, &mu, calls))
	transfers(100)
	// n2 takes partitions: they run there at version 2; none of version 2
	// runs on n1.
	testkit.WaitFor(t, time.Minute, "n2 running partitions at version 2, all partitions running", func() bool {
		st, err := n1.Cluster(ctx)
		if err != nil {
			return false
		}
		onN2 := 0
		for _, p := range st.Partitions {
			if p.State != string(partition.StateRunning) || p.MovingTo != "" {
				return false
			}
			if p.Active == "n2" {
				onN2++
			}
		}
		return onN2 > 0
	})
	st, err := n1.Cluster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Partitions {
		v := version(p.Partition)
		t.Logf("bank/%d: %s at epoch %d, state version %d, avoid %v", p.Partition, p.Active, p.Epoch, v, p.Avoid)
		if p.Active == "n1" && v != 1 {
			t.Errorf("bank/%d runs on n1 (version 1) with state of version %d", p.Partition, v)
		}
		if p.Active == "n2" && v != 2 {
			t.Errorf("bank/%d runs on n2 (version 2) with state of version %d", p.Partition, v)
		}
	}
	waitBankHolds(t, ctx, n2, accounts, 200)

	// n1 is upgraded: it leaves (a graceful stop hands its partitions over).
	stopCtx, stopCancel := context.WithTimeout(ctx, time.Minute)
	if err := n1.Stop(stopCtx); err != nil && !errors.Is(err, eddy.ErrNotRunning) {
		t.Logf("n1 stop: %v", err)
	}
	stopCancel()
	transfers(100)
	testkit.WaitFor(t, time.Minute, "every partition running on n2", func() bool {
		st, err := n2.Cluster(ctx)
		if err != nil {
			return false
		}
		for _, p := range st.Partitions {
			if p.Active != "n2" || p.State != string(partition.StateRunning) {
				return false
			}
		}
		return len(st.Partitions) == partitions
	})
	waitBankHolds(t, ctx, n2, accounts, 300)
	for p := range partitions {
		if v := version(p); v != 2 {
			t.Errorf("bank/%d: state version %d on n2, want 2", p, v)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, a := range accounts {
		if calls[a] != 1 {
			t.Errorf("account %s migrated %d times, want once", a, calls[a])
		}
	}
	var extra []string
	for k := range calls {
		if !strings.HasPrefix(k, "acct-") {
			extra = append(extra, k)
		}
	}
	if len(extra) > 0 {
		t.Errorf("Migrate ran for keys that are not accounts: %v", extra)
	}
}

// A node of an older version that joins a cluster whose partitions hold
// state of a newer version (here: n1, version 1, joins n2, which migrated
// every partition to version 2) never runs one of them: its hot replicas
// stop at the newer state, and a partition handed to it is refused before
// anything is written and given back, avoided. The partitions keep running
// on n2, and the bank loses nothing.
func TestOlderNodeNeverRunsNewerState(t *testing.T) {
	srv := natstest.Start(t)
	const partitions = 4
	var (
		mu    sync.Mutex
		calls = map[string]int{}
	)
	n2 := startMember(t, srv.URL(), "n2", "", nil, bankV2(partitions, &mu, calls))
	waitSettled(t, []*eddy.Node{n2}, partitions)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	accounts, transfers := fundBank(t, ctx, srv, 12, 33)
	transfers(100)
	waitBankHolds(t, ctx, n2, accounts, 100)

	startMember(t, srv.URL(), "n1", n2.GossipAddr(), nil, apps.Bank(partitions))
	transfers(100)
	var last eddy.ClusterStatus
	for start := time.Now(); time.Since(start) < 5*time.Second; time.Sleep(50 * time.Millisecond) {
		st, err := n2.Cluster(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range st.Partitions {
			if p.Active == "n1" && p.State == string(partition.StateRunning) {
				t.Fatalf("bank/%d (state version 2) runs on n1 (version 1)", p.Partition)
			}
		}
		last = st
	}
	for _, p := range last.Partitions {
		t.Logf("bank/%d: %s at epoch %d (%s), moving to %q, avoid %v", p.Partition, p.Active, p.Epoch, p.State, p.MovingTo, p.Avoid)
	}
	// n1's replicas refuse the newer state and are given back: the
	// partitions avoid n1, and no move towards it waits for ever.
	testkit.WaitFor(t, 30*time.Second, "every partition running on n2, avoiding n1, with no move to it", func() bool {
		st, err := n2.Cluster(ctx)
		if err != nil {
			return false
		}
		for _, p := range st.Partitions {
			if p.Active != "n2" || p.State != string(partition.StateRunning) || p.MovingTo != "" || !slices.Contains(p.Avoid, "n1") {
				return false
			}
		}
		return true
	})
	waitBankHolds(t, ctx, n2, accounts, 200)
}
