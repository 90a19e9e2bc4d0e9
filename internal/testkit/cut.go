package testkit

import (
	"net"
	"sync"
	"testing"
)

// CutProxy forwards TCP connections from a loopback port to a target, and
// can cut the path the way a network partition does: while cut, bytes stop
// flowing both ways and new connections are accepted but not forwarded,
// yet no connection is closed or reset, so each end finds out only by its
// own timeouts. Heal lets the held bytes through again. Close (run at the
// test's end) stops it and closes every connection.
type CutProxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	cut    bool
	healed chan struct{} // closed by Heal; a new one while cut
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// NewCutProxy starts a proxy to target on a free loopback port.
func NewCutProxy(t testing.TB, target string) *CutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &CutProxy{ln: ln, target: target, conns: make(map[net.Conn]struct{}), healed: make(chan struct{})}
	close(p.healed)
	p.wg.Go(p.accept)
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's host:port.
func (p *CutProxy) Addr() string { return p.ln.Addr().String() }

// Cut stops every byte until Heal.
func (p *CutProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.cut {
		p.cut = true
		p.healed = make(chan struct{})
	}
}

// Heal lets bytes flow again.
func (p *CutProxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		p.cut = false
		close(p.healed)
	}
}

// Close stops the proxy and closes every connection.
func (p *CutProxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.ln.Close()
	for c := range p.conns {
		c.Close()
	}
	if p.cut {
		p.cut = false
		close(p.healed)
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// gate blocks while the path is cut; it reports false once the proxy is
// closed.
func (p *CutProxy) gate() bool {
	p.mu.Lock()
	healed, closed := p.healed, p.closed
	p.mu.Unlock()
	<-healed
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.closed && !closed
}

// track records c for Close; it reports false (and closes c) once closed.
func (p *CutProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *CutProxy) accept() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(in) {
			return
		}
		p.wg.Go(func() {
			if !p.gate() { // a connection made while cut waits, unanswered
				return
			}
			out, err := net.Dial("tcp", p.target)
			if err != nil {
				in.Close()
				return
			}
			if !p.track(out) {
				in.Close()
				return
			}
			p.wg.Go(func() { p.pipe(out, in) })
			p.pipe(in, out)
		})
	}
}

// pipe copies from src to dst, holding each chunk while the path is cut,
// and closes both when either side ends.
func (p *CutProxy) pipe(src, dst net.Conn) {
	defer src.Close()
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.gate() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
