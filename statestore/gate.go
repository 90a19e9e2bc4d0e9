package statestore

import (
	"sync"
	"sync/atomic"
)

// gate lets operations run concurrently with each other and makes Close wait
// for the ones in flight, without a lock on the hot path. Unlike a
// sync.RWMutex it is reentrant: an Iterate callback may call Get while Close
// is waiting.
type gate struct {
	state   atomic.Int64 // gateClosed | number of operations in flight
	drained chan struct{}
	once    sync.Once
}

const gateClosed = 1 << 62

func newGate() *gate { return &gate{drained: make(chan struct{})} }

// enter admits an operation; it reports false once the gate is closed.
// Every admitted operation must call leave.
func (g *gate) enter() bool {
	if g.state.Add(1)&gateClosed != 0 {
		g.leave()
		return false
	}
	return true
}

func (g *gate) leave() {
	if g.state.Add(-1) == gateClosed {
		g.once.Do(func() { close(g.drained) })
	}
}

// close shuts the gate and waits until no operation is in flight. It reports
// false if the gate was already closed (and then does not wait).
func (g *gate) close() bool {
	for {
		s := g.state.Load()
		if s&gateClosed != 0 {
			return false
		}
		if g.state.CompareAndSwap(s, s|gateClosed) {
			if s == 0 {
				g.once.Do(func() { close(g.drained) })
			}
			<-g.drained
			return true
		}
	}
}

func (g *gate) isClosed() bool { return g.state.Load()&gateClosed != 0 }
