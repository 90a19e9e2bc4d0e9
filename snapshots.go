package eddy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy/changelog"
)

// Snapshots on demand (`node snapshot`): every node that registered an
// actor type answers on snapshotSubject(type) for the partitions of the type
// it runs, one answer per partition, once the snapshot is uploaded.

// SnapshotResult is one partition's answer to Node.Snapshot.
type SnapshotResult struct {
	Type      string `msgpack:"t" json:"type"`
	Partition int    `msgpack:"p" json:"partition"`
	// Node is the node that runs the partition and took the snapshot.
	Node     string         `msgpack:"n" json:"node"`
	Snapshot SnapshotStatus `msgpack:"s" json:"snapshot"`
	// Err says why there is no snapshot, when there is none.
	Err string `msgpack:"e,omitempty" json:"error,omitempty"`
}

// snapshotReq asks the nodes running an actor type for snapshots.
type snapshotReq struct {
	Partition int `msgpack:"p"` // -1: every partition
}

// snapshotTimeout bounds one partition's snapshot on its node: a checkpoint
// and the upload of what the bucket does not hold yet.
const snapshotTimeout = 2 * time.Minute

func snapshotSubject(typ string) string { return "eddy.snapshot." + typ }

// serveSnapshots answers snapshot requests for typ, as long as nc is open.
func (n *Node) serveSnapshots(nc *nats.Conn, typ string) error {
	_, err := nc.Subscribe(snapshotSubject(typ), func(m *nats.Msg) {
		var req snapshotReq
		if err := msgpack.Unmarshal(m.Data, &req); err != nil {
			return
		}
		r := n.reconciler()
		if r == nil {
			return
		}
		for k, a := range r.view.Load().actives {
			if k.typ != typ || req.Partition >= 0 && k.p != req.Partition {
				continue
			}
			n.wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), snapshotTimeout)
				defer cancel()
				res := SnapshotResult{Type: k.typ, Partition: k.p, Node: n.cfg.NodeID}
				st, err := a.Snapshot(ctx)
				if err != nil {
					res.Err = err.Error()
				}
				res.Snapshot = st
				b, err := msgpack.Marshal(res)
				if err == nil {
					_ = m.Respond(b)
				}
			})
		}
	})
	return err
}

// Snapshot asks the nodes that run actor type typ for a snapshot of each of
// its partitions now (partition < 0), or of one, and returns them once
// uploaded, by partition. A partition's node takes one whether or not
// periodic snapshots are configured (Config.SnapshotEvery,
// SnapshotInterval); one with nothing new since its last snapshot returns
// that one. The partitions are those with a changelog; a partition whose
// node does not answer before ctx ends is missing from the result, and the
// error names it.
func (n *Node) Snapshot(ctx context.Context, typ string, partition int) ([]SnapshotResult, error) {
	n.mu.Lock()
	nc, js, running := n.nc, n.js, n.running
	n.mu.Unlock()
	if !running {
		return nil, ErrNotRunning
	}
	want := map[int]bool{}
	names := js.StreamNames(ctx)
	for name := range names.Name() {
		if p, ok := changelog.StreamPartition(name, typ); ok && (partition < 0 || p == partition) {
			want[p] = true
		}
	}
	if err := names.Err(); err != nil && !errors.Is(err, jetstream.ErrEndOfData) {
		return nil, fmt.Errorf("eddy: snapshot %s: list streams: %w", typ, err)
	}
	if len(want) == 0 {
		return nil, fmt.Errorf("%w: %s has no partition %s with a changelog", ErrNotFound, typ, partitionName(partition))
	}
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	req, err := msgpack.Marshal(snapshotReq{Partition: partition})
	if err != nil {
		return nil, err
	}
	if err := nc.PublishRequest(snapshotSubject(typ), inbox, req); err != nil {
		return nil, err
	}
	var out []SnapshotResult
	for len(want) > 0 {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			missing := make([]int, 0, len(want))
			for p := range want {
				missing = append(missing, p)
			}
			slices.Sort(missing)
			return sortResults(out), fmt.Errorf("eddy: snapshot %s: no answer for partitions %v (not running?): %w", typ, missing, err)
		}
		var res SnapshotResult
		if msgpack.Unmarshal(m.Data, &res) != nil || !want[res.Partition] {
			continue
		}
		delete(want, res.Partition)
		out = append(out, res)
	}
	return sortResults(out), nil
}

func sortResults(rs []SnapshotResult) []SnapshotResult {
	slices.SortFunc(rs, func(a, b SnapshotResult) int {
		return cmp.Or(strings.Compare(a.Type, b.Type), cmp.Compare(a.Partition, b.Partition))
	})
	return rs
}

func partitionName(p int) string {
	if p < 0 {
		return "at all"
	}
	return fmt.Sprint(p)
}
