package actor

import (
	"context"
	"log/slog"
)

// Context is what a Receiver sees of its actor. One Context is made per incarnation
// and handed to Started, every Receive and Stopped of that incarnation.
//
// Self, Context, Logger, Restarts and Stop may be called from any goroutine.
// Respond and RespondError answer the message being received and may only be
// called from Receive, on the actor's goroutine.
type Context struct {
	ref      *Ref
	ctx      context.Context
	restarts int

	// The Ask being answered, set for the duration of one Receive.
	asked     bool
	responded bool
	response  result
}

// Self returns the Ref of the actor this incarnation belongs to. It stays valid across
// restarts.
func (c *Context) Self() *Ref { return c.ref }

// Context returns a context that is cancelled when the current incarnation ends:
// after a failure, before a restart, or when the actor stops. It is cancelled before
// Stopped runs, so goroutines started with it are told to end before Stopped waits
// for them.
func (c *Context) Context() context.Context { return c.ctx }

// Respond sets the reply to the Ask that delivered the current message. Only the
// first Respond or RespondError of a message counts. It does nothing for a message
// delivered by Send or TrySend. If Receive then returns an error, the Ask gets that
// error instead.
func (c *Context) Respond(v any) {
	if c.asked && !c.responded {
		c.responded = true
		c.response = result{value: v}
	}
}

// RespondError makes the Ask that delivered the current message return err, without
// failing the actor (as returning err from Receive would). Only the first Respond or
// RespondError of a message counts; it does nothing for Send or TrySend.
func (c *Context) RespondError(err error) {
	if c.asked && !c.responded {
		c.responded = true
		c.response = result{err: err}
	}
}

// Logger returns the actor's logger, which tags each record with the actor's name.
func (c *Context) Logger() *slog.Logger { return c.ref.logger }

// Restarts returns how many times the actor had been restarted when this incarnation
// began: 0 for the first incarnation.
func (c *Context) Restarts() int { return c.restarts }

// Stopping returns a channel that is closed once the actor has been asked to
// stop (Ref.Stop, Ref.StopNoWait or Context.Stop). A Receive that waits on
// something outside the actor (a retry loop, a slow dependency) selects on it
// to give up, so that Stop does not wait for that dependency.
func (c *Context) Stopping() <-chan struct{} { return c.ref.stopping }

// Stop asks the actor to stop, like Ref.Stop, without waiting: no new messages are
// accepted, the ones already queued are processed after the current one, then
// Stopped runs and the actor terminates. Unlike Ref.Stop it is safe to call from
// Receive.
func (c *Context) Stop() { c.ref.stop() }

// begin prepares the Context for one message.
func (c *Context) begin(asked bool) {
	c.asked, c.responded, c.response = asked, false, result{}
}

// reply returns the answer for the message just received and resets it.
func (c *Context) reply() result {
	r := c.response
	c.asked, c.responded, c.response = false, false, result{}
	return r
}
