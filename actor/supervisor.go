package actor

import (
	"errors"
	"fmt"
	"time"
)

// Directive is what a supervisor does with a failed actor.
type Directive int

const (
	// Restart runs a new incarnation (fresh Receiver from Props.New) after the backoff.
	// Queued messages stay queued for it.
	Restart Directive = iota
	// Stop ends the actor: Done is closed, Err returns the failure, and queued Ask
	// callers receive that failure.
	Stop
)

// String returns "restart" or "stop".
func (d Directive) String() string {
	switch d {
	case Restart:
		return "restart"
	case Stop:
		return "stop"
	default:
		return fmt.Sprintf("Directive(%d)", int(d))
	}
}

// SupervisorConfig says how failures are handled. A failure is an error returned by
// Started or Receive, or a panic in New, Started or Receive.
//
// Zero duration fields take their value from DefaultSupervisorConfig when the actor is
// spawned, so SupervisorConfig{MaxRestarts: 3} is a complete configuration.
type SupervisorConfig struct {
	// MinBackoff is the delay before the first restart after a healthy run. Each further
	// consecutive failure doubles it. 0 means the default.
	MinBackoff time.Duration

	// MaxBackoff caps the doubled delay. 0 means the default, or MinBackoff if that is
	// larger.
	MaxBackoff time.Duration

	// ResetAfter is how long an incarnation must run without failing for its failure to
	// count as the first of a new series: the backoff returns to MinBackoff and the
	// consecutive-restart count to zero. 0 means the default.
	ResetAfter time.Duration

	// MaxRestarts is how many consecutive restarts are allowed; the next failure ends
	// the actor with that failure as its Err. 0 means unlimited.
	MaxRestarts int

	// Decide chooses the directive for a failure. nil means always Restart. It runs on
	// the actor's goroutine and must not block.
	Decide func(err error) Directive
}

// DefaultSupervisorConfig returns a configuration suited to long-lived actors that
// should heal from transient faults (a broken connection, a restarted dependency).
func DefaultSupervisorConfig() SupervisorConfig {
	return SupervisorConfig{
		// Long enough that a crash loop does not spin a CPU or flood the log,
		// short enough that a one-off fault heals unnoticed.
		MinBackoff: 100 * time.Millisecond,
		// A persistently failing actor still retries every 10s, so it recovers
		// soon after whatever it depends on does.
		MaxBackoff: 10 * time.Second,
		// Three maximum backoffs of healthy running mean the last series of
		// failures is over.
		ResetAfter: 30 * time.Second,
		// An actor that owns a partition must keep trying: the cluster, not the
		// actor, decides when to move the work elsewhere.
		MaxRestarts: 0,
	}
}

// Validate reports fields that are out of range or inconsistent with each other. Zero
// fields are valid: they stand for the defaults.
func (c SupervisorConfig) Validate() error {
	var errs []error
	if c.MinBackoff < 0 {
		errs = append(errs, fmt.Errorf("MinBackoff %v is negative", c.MinBackoff))
	}
	if c.MaxBackoff < 0 {
		errs = append(errs, fmt.Errorf("MaxBackoff %v is negative", c.MaxBackoff))
	}
	if c.MaxBackoff > 0 && c.MinBackoff > c.MaxBackoff {
		errs = append(errs, fmt.Errorf("MinBackoff %v is larger than MaxBackoff %v", c.MinBackoff, c.MaxBackoff))
	}
	if c.ResetAfter < 0 {
		errs = append(errs, fmt.Errorf("ResetAfter %v is negative", c.ResetAfter))
	}
	if c.MaxRestarts < 0 {
		errs = append(errs, fmt.Errorf("MaxRestarts %d is negative", c.MaxRestarts))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("actor: invalid SupervisorConfig: %w", err)
	}
	return nil
}

// withDefaults fills zero duration fields from DefaultSupervisorConfig.
func (c SupervisorConfig) withDefaults() SupervisorConfig {
	d := DefaultSupervisorConfig()
	if c.MinBackoff == 0 {
		c.MinBackoff = d.MinBackoff
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = max(d.MaxBackoff, c.MinBackoff)
	}
	if c.ResetAfter == 0 {
		c.ResetAfter = d.ResetAfter
	}
	return c
}

// backoff returns the delay before restart number consecutive+1 of a series
// (consecutive counts the restarts already made in it).
func (c SupervisorConfig) backoff(consecutive int) time.Duration {
	d := c.MinBackoff
	for i := 0; i < consecutive && d < c.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, c.MaxBackoff)
}

// decide applies Decide, treating nil as always Restart.
func (c SupervisorConfig) decide(err error) Directive {
	if c.Decide == nil {
		return Restart
	}
	return c.Decide(err)
}
