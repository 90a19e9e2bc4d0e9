package actor

import (
	"context"
	"sync"
)

// envelope is one queued message. reply is nil for Send and TrySend; for Ask it has a
// buffer of one, so the actor never blocks answering a caller that gave up.
type envelope struct {
	msg   any
	reply chan result
}

// result answers an Ask.
type result struct {
	value any
	err   error
}

// answer delivers r to the Ask waiting on e, if any. It never blocks: each envelope is
// answered at most once and its reply channel has room for one result.
func (e envelope) answer(r result) {
	if e.reply != nil {
		e.reply <- r
	}
}

// mailbox is a bounded FIFO queue with one consumer (the actor goroutine) and any
// number of producers. Every envelope that push accepts is later returned by pop or
// by drainClosed, so no Ask can wait on a message that was silently lost.
type mailbox struct {
	limit int
	// ready has a buffer of one and holds a token whenever the consumer may have
	// something to do: a push or a close happened since it last looked.
	ready chan struct{}

	mu     sync.Mutex
	buf    []envelope // ring buffer, grown on demand up to limit
	head   int
	n      int
	closed bool
	// space is closed (and cleared) to wake blocked producers when a slot frees up or
	// the mailbox closes; it is nil while nobody waits.
	space chan struct{}
}

func newMailbox(limit int) *mailbox {
	return &mailbox{limit: limit, ready: make(chan struct{}, 1)}
}

// push appends e. When the mailbox is full it returns ErrMailboxFull if block is false,
// and otherwise waits for room, for close (ErrStopped) or for ctx (ctx.Err()).
func (m *mailbox) push(ctx context.Context, e envelope, block bool) error {
	for {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return ErrStopped
		}
		if m.n < m.limit {
			m.enqueue(e)
			m.mu.Unlock()
			m.signal()
			return nil
		}
		if !block {
			m.mu.Unlock()
			return ErrMailboxFull
		}
		if m.space == nil {
			m.space = make(chan struct{})
		}
		space := m.space
		m.mu.Unlock()

		select {
		case <-space:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// enqueue adds e at the tail; m.mu is held and m.n < m.limit.
func (m *mailbox) enqueue(e envelope) {
	if m.n == len(m.buf) {
		grown := make([]envelope, min(max(2*len(m.buf), 16), m.limit))
		for i := 0; i < m.n; i++ {
			grown[i] = m.buf[(m.head+i)%len(m.buf)]
		}
		m.buf, m.head = grown, 0
	}
	m.buf[(m.head+m.n)%len(m.buf)] = e
	m.n++
}

// pop removes the oldest envelope. ok is false when the mailbox is empty; closed then
// says whether it will stay empty forever.
func (m *mailbox) pop() (e envelope, ok, closed bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.n == 0 {
		return envelope{}, false, m.closed
	}
	e = m.buf[m.head]
	m.buf[m.head] = envelope{} // let the message be collected
	m.head = (m.head + 1) % len(m.buf)
	m.n--
	m.wakeProducers()
	return e, true, m.closed
}

// close stops accepting envelopes and wakes blocked producers so they return
// ErrStopped. Envelopes already queued stay for pop. close is idempotent.
func (m *mailbox) close() {
	m.mu.Lock()
	m.closed = true
	m.wakeProducers()
	m.mu.Unlock()
	m.signal()
}

// drainClosed closes the mailbox and removes every envelope still queued, oldest
// first, for the caller to answer.
func (m *mailbox) drainClosed() []envelope {
	m.close()
	var left []envelope
	for {
		e, ok, _ := m.pop()
		if !ok {
			return left
		}
		left = append(left, e)
	}
}

// len returns the number of queued envelopes.
func (m *mailbox) len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.n
}

// wakeProducers releases producers blocked on a full mailbox; m.mu is held.
func (m *mailbox) wakeProducers() {
	if m.space != nil {
		close(m.space)
		m.space = nil
	}
}

// signal leaves a token in ready without blocking.
func (m *mailbox) signal() {
	select {
	case m.ready <- struct{}{}:
	default:
	}
}
