package actor

import (
	"context"
	"log/slog"
	"sync"
)

// System owns a set of actors so that they can be stopped together, for example when
// a node shuts down. An actor leaves the set when it terminates.
type System struct {
	logger *slog.Logger

	mu      sync.Mutex
	actors  map[*Ref]struct{}
	stopped bool
}

// NewSystem returns an empty System. logger is the default for actors spawned without
// Props.Logger; nil means slog.Default().
func NewSystem(logger *slog.Logger) *System {
	if logger == nil {
		logger = slog.Default()
	}
	return &System{logger: logger, actors: make(map[*Ref]struct{})}
}

// Spawn starts an actor owned by s, as the package-level Spawn does. It returns
// ErrStopped once Stop has been called.
func (s *System) Spawn(p Props) (*Ref, error) {
	r, err := newRef(p, s.logger)
	if err != nil {
		return nil, err
	}
	r.onExit = s.remove
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil, ErrStopped
	}
	s.actors[r] = struct{}{}
	go r.run()
	return r, nil
}

// Len returns how many actors of s have not terminated yet.
func (s *System) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.actors)
}

// Stop refuses further Spawns, stops every actor of s concurrently (each drains its
// mailbox, as Ref.Stop does) and waits until all have terminated or ctx is done. It
// returns nil when all have terminated and ctx.Err() otherwise; the remaining actors
// still terminate in the background. Stop is idempotent.
func (s *System) Stop(ctx context.Context) error {
	s.mu.Lock()
	s.stopped = true
	refs := make([]*Ref, 0, len(s.actors))
	for r := range s.actors {
		refs = append(refs, r)
	}
	s.mu.Unlock()

	for _, r := range refs {
		r.stop() // all at once, so they drain concurrently
	}
	for _, r := range refs {
		if err := r.Stop(ctx); err != nil {
			return err
		}
	}
	return nil
}

// remove drops a terminated actor from the set.
func (s *System) remove(r *Ref) {
	s.mu.Lock()
	delete(s.actors, r)
	s.mu.Unlock()
}
