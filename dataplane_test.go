package eddy_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/examples/apps"
	"github.com/eddyrt/eddy/internal/natstest"
	"github.com/eddyrt/eddy/internal/testkit"
)

// A member cut off NATS while it still gossips with the others (its
// connection goes silent, with no reset) notices by its pings, tells the
// cluster, and the leader fails its partitions over to the members that
// reach NATS. The cut member's last commit, held in the network, reaches
// NATS when the path heals and is fenced. Once back, the member takes
// partitions again; no transfer is lost or applied twice.
func TestClusterMemberCutOffNATS(t *testing.T) {
	srv := natstest.Start(t)
	const partitions = 6
	bank := apps.Bank(partitions)
	path := testkit.NewCutProxy(t, strings.TrimPrefix(srv.URL(), "nats://"))
	n1 := startMember(t, srv.URL(), "n1", "", nil, bank)
	n2 := startMember(t, srv.URL(), "n2", n1.GossipAddr(), nil, bank)
	n3 := startMember(t, "nats://"+path.Addr(), "n3", n1.GossipAddr(), nil, bank)
	nodes := []*eddy.Node{n1, n2, n3}
	t.Logf("settled in %v", waitSettled(t, nodes, partitions))

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	accounts, transfers := fundBank(t, ctx, srv, 20, 7)
	const rounds, perRound = 30, 20
	done := make(chan struct{})
	go func() { // transfers throughout, through a client of the server itself
		defer close(done)
		for range rounds {
			transfers(perRound)
			time.Sleep(100 * time.Millisecond)
		}
	}()

	st, err := n1.Cluster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lost := map[string]uint64{} // "type/p" -> its epoch on n3
	for _, p := range st.Partitions {
		if p.Active == "n3" {
			lost[fmt.Sprintf("%s/%d", p.Type, p.Partition)] = p.Epoch
		}
	}
	if len(lost) == 0 {
		t.Fatal("n3 holds no partition")
	}

	cut := time.Now()
	path.Cut()
	var sawDown bool
	testkit.WaitFor(t, 30*time.Second, "n3's partitions running elsewhere at new epochs", func() bool {
		st, err := n1.Cluster(ctx)
		if err != nil {
			return false
		}
		for _, m := range st.Members {
			sawDown = sawDown || m.ID == "n3" && m.NATS == "down"
		}
		for _, p := range st.Partitions {
			e, ok := lost[fmt.Sprintf("%s/%d", p.Type, p.Partition)]
			if ok && (p.Active == "n3" || p.Epoch <= e || p.State != "running") {
				return false
			}
		}
		return true
	})
	t.Logf("n3 cut off NATS: its %d partitions running on n1 and n2 %v after the cut", len(lost), time.Since(cut).Round(10*time.Millisecond))
	if !sawDown {
		t.Error("n1's /v1/cluster never showed n3's NATS down")
	}

	path.Heal()
	healed := time.Now()
	waitSettled(t, nodes, partitions)
	t.Logf("path healed: n3 runs its share again %v later", time.Since(healed).Round(10*time.Millisecond))
	<-done
	waitBankHolds(t, ctx, n3, accounts, rounds*perRound)
}
