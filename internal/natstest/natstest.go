// Package natstest runs a real, embedded NATS server with JetStream for tests.
package natstest

import (
	"net"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Server is an embedded nats-server with JetStream on a loopback port and a
// store directory that survive Restart.
type Server struct {
	t    testing.TB
	opts server.Options
	srv  *server.Server
}

// Start runs a server with JetStream storing under a fresh temporary directory.
// It is shut down when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartWith(t, nil)
}

// StartWith runs a server as Start does, with its options changed by mutate
// first (a given port, users, TLS).
func StartWith(t testing.TB, mutate func(*server.Options)) *Server {
	t.Helper()
	s := &Server{t: t, opts: server.Options{
		Host:      "127.0.0.1",
		Port:      -1,
		JetStream: true,
		StoreDir:  t.TempDir(),
		NoLog:     true,
		NoSigs:    true,
	}}
	if mutate != nil {
		mutate(&s.opts)
	}
	s.start()
	// Keep the port across restarts.
	s.opts.Port = s.srv.Addr().(*net.TCPAddr).Port
	t.Cleanup(s.Shutdown)
	return s
}

func (s *Server) start() {
	s.t.Helper()
	opts := s.opts
	srv, err := server.NewServer(&opts)
	if err != nil {
		s.t.Fatalf("nats server: %v", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		s.t.Fatalf("nats server not ready")
	}
	s.srv = srv
}

// URL is the server's client URL.
func (s *Server) URL() string { return s.srv.ClientURL() }

// Shutdown stops the server (idempotent).
func (s *Server) Shutdown() {
	if s.srv != nil {
		s.srv.Shutdown()
		s.srv.WaitForShutdown()
	}
}

// Restart stops the server and starts it again on the same port and store.
func (s *Server) Restart() {
	s.t.Helper()
	s.Shutdown()
	s.start()
}

// Snapshot is a copy of a server's JetStream store (Server.Snapshot).
type Snapshot struct{ dir string }

// Snapshot stops the server, copies its store and starts it again: what a
// host crash of a server that had synced its writes to disk up to now would
// come back with (see Rewind).
func (s *Server) Snapshot() Snapshot {
	s.t.Helper()
	s.Shutdown()
	dir := s.t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(s.opts.StoreDir)); err != nil {
		s.t.Fatalf("snapshot: %v", err)
	}
	s.start()
	return Snapshot{dir: dir}
}

// Rewind stops the server and starts it again on the store of snap: every
// write acknowledged since snap was taken is lost, as when a host crashes
// before its server (with the default sync_interval) synced them to disk.
func (s *Server) Rewind(snap Snapshot) {
	s.t.Helper()
	s.Shutdown()
	if err := os.RemoveAll(s.opts.StoreDir); err != nil {
		s.t.Fatalf("rewind: %v", err)
	}
	if err := os.CopyFS(s.opts.StoreDir, os.DirFS(snap.dir)); err != nil {
		s.t.Fatalf("rewind: %v", err)
	}
	s.start()
}

// Connect returns a client connection and its JetStream context, closed when the
// test ends. It reconnects forever, every 50 ms; opts are applied after that.
func (s *Server) Connect(t testing.TB, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	opts = append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(s.URL(), opts...)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return nc, js
}
