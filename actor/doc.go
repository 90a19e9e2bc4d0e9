// Package actor is eddy's actor core: bounded mailboxes, spawn, supervision and
// request/reply, with no knowledge of streams or clusters. Partition actors and hot
// replica actors are built on it.
//
// # Model
//
// An actor is one goroutine that owns some state and a mailbox. Other goroutines never
// touch the state; they talk to the actor through its Ref:
//
//   - Send queues a message and blocks while the mailbox is full (backpressure: a slow
//     actor slows its producers down instead of buffering without bound or dropping);
//   - TrySend queues or fails at once with ErrMailboxFull;
//   - Ask queues a message and waits for the answer the Receiver gives with
//     Context.Respond, or for the error it returns.
//
// Messages are received one at a time, in the order they were queued, so a Receiver
// needs no locks for its own state.
//
// # Incarnations and supervision
//
// The Receiver that holds the state is made by Props.New. Its life, from New through
// Started, the messages it receives, to Stopped, is an incarnation. When Started or
// Receive returns an error or panics, that incarnation has failed: its Context is
// cancelled, Stopped runs, and the supervisor (SupervisorConfig) either stops the
// actor or, after an exponential backoff, starts a new incarnation with a fresh
// Receiver from New. The failing message is not delivered again (an Ask waiting on it
// gets the error); messages still queued wait for the new incarnation. This is the
// "let it crash" model of Erlang and Akka: rather than guarding every error path, an
// actor rebuilds its state from its source of truth (for a partition actor, the local
// store and the changelog) in Started.
//
// # Termination
//
// Ref.Stop stops the mailbox from accepting messages, lets the current incarnation
// process what is already queued, runs Stopped and waits for the goroutine to end.
// An actor also terminates when its supervisor gives up (MaxRestarts) or Decide says
// Stop. Either way Done is closed afterwards, Err says why (nil after Stop), and every
// message ever accepted has been received or answered with an error: no Ask is left
// waiting. A System stops a group of actors together.
//
// # Goroutines
//
// Each actor has exactly one goroutine, started by Spawn and gone when Done is closed.
// Goroutines that an incarnation starts itself belong to it: they should end when
// Context.Context is cancelled, and Stopped may wait for them.
package actor
