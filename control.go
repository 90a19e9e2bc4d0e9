package eddy

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// Nodes talk to each other over NATS request/reply. A node serves:
//
//	eddy.ctl.<node>.apply    commands forwarded to the Raft leader (lag reports, give-backs)
//	eddy.ctl.<node>.release  "commit and stop partition p, I am its new owner" (handover.go)
//	eddy.ctl.<node>.status   the node's partition actors' statuses (status.go)
//	eddy.query.<type>.<p>    queries of partition p, by the node running it (query.go)
//	eddy.rquery.<type>.<p>.<node>  bounded-staleness reads of partition p, by the
//	                         hot replica of p on node (staleread.go)
//	eddy.type.<type>         every node that registered the type answers with its id (reset.go)
//	eddy.snapshot.<type>     every node that registered the type snapshots the partitions of it
//	                         it runs, one answer each (snapshots.go)
//
// A request's failure travels in reply headers: headerError, or one of the
// query answers (headerNotFound, headerUnavailable, headerTooStale).
func ctlSubject(node, verb string) string { return "eddy.ctl." + node + "." + verb }

// ctlTimeout bounds one control request between nodes.
const ctlTimeout = 5 * time.Second

const (
	// headerError carries a control or query request's failure.
	headerError = "Eddy-Error"
	// headerNotFound marks a query reply for a key without state.
	headerNotFound = "Eddy-Not-Found"
	// headerNode names the node that answered a query.
	headerNode = "Eddy-Node"
	// headerUnavailable marks a query reply from an owner whose partition
	// does not run now; it holds the reason.
	headerUnavailable = "Eddy-Unavailable"
	// headerTooStale marks a replica's answer to a read whose bound its copy
	// does not meet; the reader asks the next candidate.
	headerTooStale = "Eddy-Too-Stale"
)

func respond(m *nats.Msg, data []byte, err error) { _ = m.RespondMsg(reply(m, data, err)) }

// reply is the answer to m: data, or err in a header.
func reply(m *nats.Msg, data []byte, err error) *nats.Msg {
	r := nats.NewMsg(m.Reply)
	r.Data = data
	switch {
	case errors.Is(err, ErrNotFound):
		r.Header.Set(headerNotFound, "1")
	case errors.Is(err, errTooStale):
		r.Header.Set(headerTooStale, err.Error())
	case errors.Is(err, ErrUnavailable):
		r.Header.Set(headerUnavailable, err.Error())
	case err != nil:
		r.Header.Set(headerError, err.Error())
	}
	return r
}

// errLeaderRefused means the leader received a forwarded command and
// refused it (a stale give-back, say): sending it again will not help.
var errLeaderRefused = errors.New("refused by the leader")

// forward sends a command to the leader (cluster.Config.Forward).
func (n *Node) forward(ctx context.Context, leader string, cmd []byte) error {
	resp, err := n.nc.RequestWithContext(ctx, ctlSubject(leader, "apply"), cmd)
	if err != nil {
		return fmt.Errorf("forward to leader %s: %w", leader, err)
	}
	if e := resp.Header.Get(headerError); e != "" {
		return fmt.Errorf("%w: leader %s: %s", errLeaderRefused, leader, e)
	}
	return nil
}

// handleForwarded applies a command another node forwarded to this one, the
// Raft leader.
func (n *Node) handleForwarded(m *nats.Msg) {
	n.mu.Lock()
	cl := n.cl
	n.mu.Unlock()
	if cl == nil {
		respond(m, nil, ErrNotRunning)
		return
	}
	respond(m, nil, cl.ApplyForwarded(m.Data))
}
