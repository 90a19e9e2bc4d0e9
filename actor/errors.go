package actor

import (
	"errors"
	"fmt"
)

var (
	// ErrStopped is returned by Send, TrySend and Ask when the actor is stopping or has
	// terminated, and by Ask for a queued message the actor could not process because
	// Stop interrupted it (for example during a restart backoff). It is also returned by
	// System.Spawn after System.Stop.
	ErrStopped = errors.New("actor: stopped")

	// ErrMailboxFull is returned by TrySend when the mailbox holds MailboxSize messages.
	// Send never returns it: it waits for room instead.
	ErrMailboxFull = errors.New("actor: mailbox full")
)

// PanicError is the failure recorded when New, Started or Receive panics. Its Error text
// holds the panic value and the stack of the panicking goroutine, so a single log line
// locates the fault. If the panic value is an error, errors.Is and errors.As see it
// through Unwrap.
type PanicError struct {
	// Value is what was passed to panic.
	Value any
	// Stack is the stack trace captured where the panic was recovered.
	Stack []byte
}

// Error reports the panic value followed by the stack trace.
func (e *PanicError) Error() string {
	return fmt.Sprintf("actor: panic: %v\n%s", e.Value, e.Stack)
}

// Unwrap returns the panic value when it is an error, else nil.
func (e *PanicError) Unwrap() error {
	if err, ok := e.Value.(error); ok {
		return err
	}
	return nil
}
