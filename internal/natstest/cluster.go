package natstest

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// FreePort returns a loopback TCP port that nothing listened on a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Cluster is a JetStream cluster of embedded servers routed to each other
// over loopback. Its ports are chosen when it is made, so that clients can
// be given its URLs before it starts.
type Cluster struct {
	t    testing.TB
	opts []server.Options
	srv  []*server.Server
}

// NewCluster prepares a cluster of n servers, each storing under a fresh
// temporary directory; Start starts it. It is shut down when the test ends.
func NewCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t, srv: make([]*server.Server, n)}
	var (
		routes    []*url.URL
		routePort []int
	)
	for range n {
		p := FreePort(t)
		routePort = append(routePort, p)
		routes = append(routes, &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", p)})
	}
	for i := range n {
		c.opts = append(c.opts, server.Options{
			ServerName: fmt.Sprintf("s%d", i),
			Host:       "127.0.0.1",
			Port:       FreePort(t),
			JetStream:  true,
			StoreDir:   t.TempDir(),
			NoLog:      true,
			NoSigs:     true,
			Cluster:    server.ClusterOpts{Name: "eddy-test", Host: "127.0.0.1", Port: routePort[i]},
			Routes:     routes,
		})
	}
	t.Cleanup(c.Shutdown)
	return c
}

// URLs are the client URLs of the servers, comma-separated.
func (c *Cluster) URLs() string {
	urls := make([]string, len(c.opts))
	for i, o := range c.opts {
		urls[i] = fmt.Sprintf("nats://127.0.0.1:%d", o.Port)
	}
	return strings.Join(urls, ",")
}

// Start starts the servers numbered which (all of them when none are
// given) and waits until each accepts clients. Once a majority runs, the
// cluster elects its JetStream meta leader on its own; a minority stays
// without one.
func (c *Cluster) Start(which ...int) {
	c.t.Helper()
	if len(which) == 0 {
		for i := range c.opts {
			which = append(which, i)
		}
	}
	for _, i := range which {
		opts := c.opts[i]
		srv, err := server.NewServer(&opts)
		if err != nil {
			c.t.Fatalf("nats server %d: %v", i, err)
		}
		srv.Start()
		c.srv[i] = srv
	}
	for _, i := range which {
		if !c.srv[i].ReadyForConnections(10 * time.Second) {
			c.t.Fatalf("nats server %d not ready", i)
		}
	}
}

// Stop stops server i (idempotent); Start(i) starts it again on its port
// and store.
func (c *Cluster) Stop(i int) {
	if srv := c.srv[i]; srv != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
		c.srv[i] = nil
	}
}

// Shutdown stops the servers (idempotent).
func (c *Cluster) Shutdown() {
	for i := range c.srv {
		c.Stop(i)
	}
}
