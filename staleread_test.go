package eddy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/examples/apps"
	"github.com/eddyrt/eddy/internal/natstest"
	"github.com/eddyrt/eddy/partition"
)

// stateAnswer is the part of GET /v1/state/... a stale-read test looks at.
type stateAnswer struct {
	Value        apps.Account `json:"value"`
	ServedBy     string       `json:"served_by"`
	ServedByNode string       `json:"served_by_node"`
}

func getState(ctx context.Context, addr, typ, key, maxLag string) (stateAnswer, error) {
	var a stateAnswer
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/state/"+typ+"/"+key+"?max_lag="+maxLag, nil)
	if err != nil {
		return a, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return a, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return a, fmt.Errorf("GET %s: %s", req.URL, resp.Status)
	}
	return a, json.NewDecoder(resp.Body).Decode(&a)
}

// nearest is the copy a read from node asker should get, by the rule
// MaxStaleness documents: a replica in the asker's zone, else the owner when
// it is in the asker's zone, else a replica in another zone (one replica a
// partition here, so lags do not choose).
func nearest(p eddy.AssignmentStatus, asker string, zones map[string]string) (node string, replica bool) {
	z := zones[asker]
	for _, r := range p.Replicas {
		if zones[r.Node] == z {
			return r.Node, true
		}
	}
	if zones[p.Active] == z || len(p.Replicas) == 0 {
		return p.Active, false
	}
	return p.Replicas[0].Node, true
}

// Bounded-staleness reads from a node that holds no copy of a key's
// partition are answered by the nearest hot replica on another node (or by
// the owner, when it is nearer), with the owner's committed value; a bound
// no replica meets (0) is answered by the owner.
func TestStaleReadsFromNearestReplica(t *testing.T) {
	srv := natstest.Start(t)
	const partitions = 4
	bank := apps.Bank(partitions) // one hot replica a partition
	zones := map[string]string{"n1": "a", "n2": "a", "n3": "b", "n4": "c"}
	nodes := startZones(t, srv.URL(), []string{"a", "a", "b", "c"}, bank)
	n1 := nodes[0]
	waitSettled(t, nodes, partitions)

	nc, _ := srv.Connect(t)
	client, err := eddy.NewClient(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	accounts := make([]string, 8)
	for i := range accounts {
		accounts[i] = fmt.Sprintf("acct-%02d", i)
		if err := client.Send(ctx, apps.BankType, accounts[i], apps.Op{Kind: "deposit", Amount: int64(100 + i)}); err != nil {
			t.Fatal(err)
		}
	}
	want := func(i int) apps.Account { return apps.Account{Balance: int64(100 + i), Deposited: int64(100 + i)} }
	for i, a := range accounts {
		deadline := time.Now().Add(10 * time.Second)
		for {
			var acc apps.Account
			err := n1.Query(ctx, apps.BankType, a, &acc)
			if err == nil && acc == want(i) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: owner has %+v, %v; want %+v", a, acc, err, want(i))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// From every node without a copy of an account's partition, a read within
	// a generous bound is answered by the nearest copy. Replicas may still be
	// starting or catching up: poll until the answer is the expected one.
	remoteReplica, ownerNearer := 0, 0
	for i, a := range accounts {
		p := partition.Of(a, partitions)
		for _, asker := range nodes {
			deadline := time.Now().Add(10 * time.Second)
			for {
				st, err := n1.Cluster(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				pa := st.Partitions[p]
				holds := pa.Active == asker.ID()
				for _, r := range pa.Replicas {
					holds = holds || r.Node == asker.ID()
				}
				if holds {
					break
				}
				node, replica := nearest(pa, asker.ID(), zones)
				var acc apps.Account
				var served eddy.Served
				qerr := asker.Query(ctx, apps.BankType, a, &acc, eddy.MaxStaleness(10*time.Second), eddy.ServedBy(&served))
				fromReplica := served.Replica
				ans, herr := getState(ctx, asker.HTTPAddr(), apps.BankType, a, "10s")
				if qerr == nil && herr == nil && fromReplica == replica && acc == want(i) &&
					ans.ServedByNode == node && ans.Value == want(i) && (ans.ServedBy == "replica") == replica {
					if replica {
						remoteReplica++
					} else {
						ownerNearer++
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s (partition %d, owner %s, replicas %v) read from %s (zone %s): Query %+v replica=%v err=%v; "+
						"HTTP %+v err=%v; want %+v from %s (replica %v)", a, p, pa.Active, pa.Replicas, asker.ID(), zones[asker.ID()],
						acc, fromReplica, qerr, ans, herr, want(i), node, replica)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	if remoteReplica == 0 {
		t.Fatal("no read was answered by a replica on another node")
	}
	t.Logf("reads from nodes without a copy: %d by a remote replica, %d by an owner in the reader's zone", remoteReplica, ownerNearer)

	// No copy is 0 stale: the owner answers, from every node.
	for i, a := range accounts {
		p := partition.Of(a, partitions)
		for _, asker := range nodes {
			var acc apps.Account
			var served eddy.Served
			err := asker.Query(ctx, apps.BankType, a, &acc, eddy.MaxStaleness(0), eddy.ServedBy(&served))
			fromReplica := served.Replica
			if err != nil || fromReplica || acc != want(i) {
				t.Fatalf("%s from %s within 0: %+v replica=%v err=%v", a, asker.ID(), acc, fromReplica, err)
			}
			st, err := n1.Cluster(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			ans, err := getState(ctx, asker.HTTPAddr(), apps.BankType, a, "0s")
			if err != nil || ans.ServedBy != "owner" || ans.ServedByNode != st.Partitions[p].Active || ans.Value != want(i) {
				t.Fatalf("%s from %s, max_lag=0s: %+v, %v; want the owner %s", a, asker.ID(), ans, err, st.Partitions[p].Active)
			}
		}
	}
}
