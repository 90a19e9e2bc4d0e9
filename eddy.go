// Package eddy is a runtime for stateful stream processing with actors.
//
// Register actor types on a Node. Each actor type reads an input stream of the
// same name, split into partitions by key; one partition actor per partition
// runs the handler for every event, against a local state store whose every
// change is recorded in a changelog stream on NATS JetStream. Processing is
// effectively-once: after any crash, each event's effects (state changes,
// emitted messages, sends to other actors) are present exactly once.
//
//	node, _ := eddy.NewNode(eddy.DefaultConfig())
//	node.Register(eddy.ActorType{Name: "counts", Partitions: 8,
//		Handler: func(c *eddy.Context) error {
//			var n int
//			if _, err := c.Get(&n); err != nil {
//				return err
//			}
//			return c.Set(n + 1)
//		}})
//	node.Start(ctx)
package eddy

import (
	"errors"

	"github.com/eddyrt/eddy/partition"
	"github.com/eddyrt/eddy/statestore"
)

var (
	// ErrNotFound means a key has no committed state.
	ErrNotFound = statestore.ErrNotFound
	// ErrMalformed means an event could not be decoded; such events go to the
	// dead-letter stream without retries.
	ErrMalformed = errors.Join(errors.New("eddy: malformed event"), partition.ErrPermanent)
	// ErrValueTooLarge means a value exceeds Config.MaxValueSize.
	ErrValueTooLarge = partition.ErrValueTooLarge
	// ErrUnknownType means no actor type of that name is registered.
	ErrUnknownType = errors.New("eddy: unknown actor type")
	// ErrNotRunning means the node is not started (or already stopped).
	ErrNotRunning = errors.New("eddy: node not running")
	// ErrFenced means a newer owner took over a partition.
	ErrFenced = partition.ErrFenced
	// ErrUnavailable means the partition of a key does not run now: it is
	// retrying after a failure (NATS away, say), fenced, or stopped. The
	// error says which and why; HTTP answers it with 503.
	ErrUnavailable = partition.ErrUnavailable
)
