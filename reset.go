package eddy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/partition"
	"github.com/eddyrt/eddy/snapshot"
)

// Resetting an actor type (the application reset tool, `node reset`) makes
// it process its input streams again from their first event, as a new
// application would: its changelog streams go, with every consumer on them,
// and so does everything its partitions committed (state, offsets, outbox).
// The input, dead-letter and output streams stay. A node that starts the
// type afterwards finds its local stores tied to changelogs that no longer
// exist (the changelog identity), discards them, and processes the input
// from offset 0; what it emits again carries the Nats-Msg-Id of the first
// time, so a target stream drops it while its duplicate window still holds
// the first copy, and stores it again after that.

// ErrTypeRunning means a node runs the actor type that Reset was asked to
// reset: stop every node that registers it first.
var ErrTypeRunning = errors.New("eddy: actor type is running")

// ResetReport is what Reset deleted (with DryRun: would delete), and what
// it leaves.
type ResetReport struct {
	// Type is the actor type reset.
	Type string
	// DryRun is set when nothing was deleted.
	DryRun bool
	// Deleted are the streams deleted: the type's changelogs (EDDY_CL_<type>_<p>,
	// or EDDY_XCL_<type> for a type on PostgreSQL), and the stream of its
	// snapshot bucket (OBJ_EDDY_SNAP_<type>).
	Deleted []string
	// Left are the type's streams that stay: its input stream and its
	// dead-letter stream, when they exist. The streams its handler emitted
	// to stay as well.
	Left []string
	// Postgres, for a type that keeps its state in PostgreSQL (and a node
	// given Config.Postgres), maps each partition to the offset up to which
	// the replay suppresses side effects (before the reset: its committed
	// offset); PostgresRows is how many state rows were deleted.
	Postgres     map[int]uint64
	PostgresRows int64
}

// typeSubject is where every node that registered actor type typ answers
// with its node id (Reset asks who runs a type).
func typeSubject(typ string) string { return "eddy.type." + typ }

// whoRunsWait is how long Reset collects the answers of the nodes running a
// type: one round trip over a LAN, with room for a busy node.
const whoRunsWait = 500 * time.Millisecond

// serveTypes answers typeSubject, and snapshot requests (snapshots.go),
// for every registered actor type, as long as nc is open.
func (n *Node) serveTypes(nc *nats.Conn) error {
	for _, name := range n.order {
		if _, err := nc.Subscribe(typeSubject(name), func(m *nats.Msg) { _ = m.Respond([]byte(n.cfg.NodeID)) }); err != nil {
			return fmt.Errorf("subscribe %s: %w", typeSubject(name), err)
		}
		if err := n.serveSnapshots(nc, name); err != nil {
			return fmt.Errorf("subscribe %s: %w", snapshotSubject(name), err)
		}
	}
	return nil
}

// Reset deletes the changelog streams of actor type typ, so that it
// processes its input again from the first event (see ResetReport). It
// refuses with ErrTypeRunning while any node connected to NATS runs the
// type, this one included (a node that registers typ runs it). With dryRun
// it deletes nothing and reports what it would delete. Resetting a type
// that was reset already deletes nothing and succeeds.
func (n *Node) Reset(ctx context.Context, typ string, dryRun bool) (ResetReport, error) {
	n.mu.Lock()
	nc, js, running := n.nc, n.js, n.running
	n.mu.Unlock()
	if !running {
		return ResetReport{}, ErrNotRunning
	}
	if !changelog.ValidName(typ) {
		return ResetReport{}, fmt.Errorf("%w: actor type name %q", ErrInvalidConfig, typ)
	}
	nodes, err := whoRuns(ctx, nc, typ)
	if err != nil {
		return ResetReport{}, err
	}
	if len(nodes) > 0 {
		return ResetReport{}, fmt.Errorf("%w: %s runs on %v; stop them first", ErrTypeRunning, typ, nodes)
	}
	r := ResetReport{Type: typ, DryRun: dryRun}
	snapshotStream := "OBJ_" + snapshot.Bucket(typ) // an object store is a stream
	names := js.StreamNames(ctx)
	for name := range names.Name() {
		switch _, isChangelog := changelog.StreamPartition(name, typ); {
		case isChangelog, name == snapshotStream, name == partition.ExternalChangelogStream(typ):
			r.Deleted = append(r.Deleted, name)
		case name == typ || name == partition.DLQStream(typ):
			r.Left = append(r.Left, name)
		}
	}
	if err := names.Err(); err != nil && !errors.Is(err, jetstream.ErrEndOfData) {
		return ResetReport{}, fmt.Errorf("eddy: reset %s: list streams: %w", typ, err)
	}
	slices.Sort(r.Deleted)
	slices.Sort(r.Left)
	if dryRun {
		return r, n.resetExternal(ctx, js, typ, &r)
	}
	for _, name := range r.Deleted {
		if err := js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return r, fmt.Errorf("eddy: reset %s: delete %s: %w", typ, name, err)
		}
	}
	// After the streams: a changelog left behind would restore the state
	// the reset deletes (partition/external_changelog.go).
	if err := n.resetExternal(ctx, js, typ, &r); err != nil {
		return r, err
	}
	n.log.Info("actor type reset", "type", typ, "deleted", r.Deleted, "left", r.Left)
	return r, nil
}

// whoRuns lists the nodes that answer for actor type typ within whoRunsWait.
func whoRuns(ctx context.Context, nc *nats.Conn, typ string) ([]string, error) {
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(typeSubject(typ), inbox, nil); err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, whoRunsWait)
	defer cancel()
	var nodes []string
	for {
		m, err := sub.NextMsgWithContext(wctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			slices.Sort(nodes)
			return nodes, nil // the wait is over
		}
		nodes = append(nodes, string(m.Data))
	}
}
