package eddy

import (
	"slices"
	"testing"
	"time"

	"github.com/eddyrt/eddy/cluster"
)

// A bounded-staleness read asks the replicas in its own zone first, then the
// owner if it is in that zone, else the replicas in other zones; each group
// by the smallest known lag; never itself nor a node that is not alive.
func TestNearestReplicasOrder(t *testing.T) {
	alive := func(id, zone string) cluster.NodeInfo {
		return cluster.NodeInfo{ID: id, Zone: zone, State: cluster.NodeAlive}
	}
	dead := alive("n4", "b")
	dead.State = cluster.NodeDead
	m := cluster.Model{Nodes: []cluster.NodeInfo{
		alive("n1", "a"), alive("n2", "a"), alive("n3", "b"), dead, alive("n5", "c"),
		alive("n6", "a"), alive("n7", "a"), alive("n8", "c"), alive("n9", "a"),
	}}
	at := time.Now()
	replicas := []cluster.Replica{
		{Node: "n1", ReportedAt: at},
		{Node: "n2", Lag: 5, Behind: 50 * time.Millisecond, ReportedAt: at},
		{Node: "n4", ReportedAt: at},
		{Node: "n5", ReportedAt: at},
		{Node: "n6", Lag: 2, Behind: 20 * time.Millisecond, ReportedAt: at},
		{Node: "n7"}, // lag not reported yet
		{Node: "n8", Lag: 1, Behind: 10 * time.Millisecond, ReportedAt: at},
	}
	for _, tc := range []struct {
		name, active, self, zone string
		want                     []string
	}{
		{"owner in another zone", "n3", "n1", "a", []string{"n6", "n2", "n7", "n5", "n8"}},
		{"owner in this zone", "n9", "n1", "a", []string{"n6", "n2", "n7"}},
		{"from zone c", "n3", "n5", "c", []string{"n8", "n1", "n6", "n2", "n7"}},
		{"owner in zone b, asked from it", "n3", "n4", "b", nil},
		{"no zones in the model", "n3", "x", "", []string{"n1", "n5", "n8", "n6", "n2", "n7"}},
	} {
		mm := m
		if tc.zone == "" {
			mm.Nodes = slices.Clone(m.Nodes)
			for i := range mm.Nodes {
				mm.Nodes[i].Zone = ""
			}
		}
		pa := cluster.PartitionAssignment{Type: "t", Active: tc.active, Replicas: replicas}
		got := nearestReplicas(mm, pa, tc.self, tc.zone)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: asked %v, want %v", tc.name, got, tc.want)
		}
	}
}
