package cluster

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/hashicorp/raft"
)

// raftDialTimeout bounds the connection attempt of one Raft RPC: on a LAN a
// peer that is up accepts within milliseconds, and one whose host is gone
// answers nothing at all.
const raftDialTimeout = 2 * time.Second

// raftStream is raft's TCP stream layer (raft.TCPStreamLayer) with dials
// that end when the node shuts down. raft.Shutdown waits for its
// goroutines, and a candidate's vote request to a peer whose host is gone
// sits in a dial for the transport's whole timeout: stopping every node of
// a cluster at once took 10 s that way.
type raftStream struct {
	net.Listener
	advertise net.Addr
	ctx       context.Context // cancelled by Raft.Shutdown, before raft's own
}

// newRaftStream listens on bind; advertise, if not nil, is the address the
// others dial. The address given out must name a host.
func newRaftStream(ctx context.Context, bind string, advertise net.Addr) (*raftStream, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	s := &raftStream{Listener: ln, advertise: advertise, ctx: ctx}
	if addr, ok := s.Addr().(*net.TCPAddr); !ok || addr.IP == nil || addr.IP.IsUnspecified() {
		ln.Close()
		return nil, errors.New("local bind address is not advertisable")
	}
	return s, nil
}

// Dial connects to a peer, raftDialTimeout at most, and gives up when the
// node shuts down.
func (s *raftStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: min(timeout, raftDialTimeout)}
	return d.DialContext(s.ctx, "tcp", string(address))
}

// Addr is the address the others dial.
func (s *raftStream) Addr() net.Addr {
	if s.advertise != nil {
		return s.advertise
	}
	return s.Listener.Addr()
}
