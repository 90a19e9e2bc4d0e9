// Package natsproc runs the real nats-server binary as separate OS processes
// on loopback, one server or a JetStream cluster, so that tests can subject
// eddy to NATS faults: a server SIGKILLed and restarted with its store, a
// cluster member lost, a stream leader moved, NATS starting after the nodes.
//
// A test starts a cluster and waits until JetStream is usable:
//
//	c, err := natsproc.Start(natsproc.Config{Servers: 3, Dir: t.TempDir(), SyncAlways: true})
//	if err != nil { t.Fatal(err) }
//	defer c.Close()
//	if err := c.WaitReady(ctx); err != nil { t.Fatal(err) }
//	nc, err := nats.Connect(c.ConnectURL())
//
// Servers are numbered from 0 (index i) and named n1, n2, ... (name
// n<i+1>), the name a stream's leader is reported by; Index maps back. An
// index out of range panics, as with a slice. Each server keeps its ports,
// config, store and log (Dir/n1.log, appended across restarts) for the life
// of the Cluster.
//
// What a client sees, measured here (v2.15.2, loopback, 2 noisy cores):
//   - A new 3-server cluster is ready (WaitReady) 0.2-0.5 s after its
//     servers listen, sometimes ~6 s (when the first election must time
//     out); before its meta leader is elected, JetStream API requests go
//     unanswered (the client's request times out).
//   - StepDownStream hands a stream over in about 50 ms; a client publishing
//     all along saw no error and stalls of at most ~50 ms, but a stream info
//     request made during the hand-over can go unanswered (time out).
//   - After a stream's leader is SIGKILLed, publishes to the stream fail fast
//     with "no response from stream" (no responders) or time out for 4-9 s,
//     one Raft election timeout, then succeed. A killed meta leader is
//     replaced in the same time, during which JetStream API requests time
//     out. Publish with a Nats-Msg-Id and retry: the duplicate window makes
//     the retries exactly-once.
//   - A restarted member catches up (WaitReady returns) in 1-3 s.
//   - A client connected to a paused server gives it up only after missed
//     pings; see Pause.
//
// The package does not import testing, so that programs (the demo in
// cmd/node) can use it too.
package natsproc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/eddyrt/eddy/internal/procs"
)

// Sentinel errors of Cluster operations.
var (
	// ErrClosed: the Cluster was closed; it starts no more servers.
	ErrClosed = errors.New("natsproc: cluster closed")
	// ErrRunning: Start of a server whose process is running.
	ErrRunning = errors.New("natsproc: server is running")
	// ErrNotRunning: Pause or Resume of a server without a running process.
	ErrNotRunning = errors.New("natsproc: server is not running")
	// ErrExited: a server's process ended without Kill or Stop (it crashed or
	// failed to start); WaitReady reports it rather than waiting for it.
	ErrExited = errors.New("natsproc: server exited by itself")
	// ErrStopTimeout: a server did not exit within Config.StopTimeout of
	// SIGTERM and was SIGKILLed.
	ErrStopTimeout = errors.New("natsproc: server ignored SIGTERM")
	// ErrUnknownServer: a server name that is not n1..nN of this Cluster.
	ErrUnknownServer = errors.New("natsproc: unknown server name")
)

// Cluster is a set of nats-server processes on 127.0.0.1 with ports fixed at
// creation. Its methods are safe for concurrent use; operations on one server
// are serialized, each finishing (the process started and listening, or
// exited and reaped) before the next begins. Close stops every server and
// every goroutine of the Cluster.
type Cluster struct {
	cfg     Config
	bin     string
	ports   []serverPorts
	servers []*server
	index   map[string]int // server name -> index

	closed atomic.Bool
	wg     sync.WaitGroup // the wait goroutines of all processes
}

// New prepares a Cluster without starting any server: ports are chosen, Dir
// and the store directories created, and the binary found or built (see
// Binary). URLs are known from here on, so a test can start eddy nodes first
// and NATS later with StartAll.
func New(cfg Config) (*Cluster, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("natsproc config: %w", err)
	}
	bin := cfg.Binary
	if bin == "" {
		// A cold build takes seconds; minutes only on a machine that is
		// badly overloaded, and then failing says more than hanging.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		var err error
		if bin, err = Binary(ctx); err != nil {
			return nil, err
		}
	}
	ports, err := procs.PickPorts(3 * cfg.Servers)
	if err != nil {
		return nil, fmt.Errorf("natsproc ports: %w", err)
	}
	c := &Cluster{cfg: cfg, bin: bin, index: map[string]int{}}
	for i := range cfg.Servers {
		name := serverName(i)
		s := &server{
			name:     name,
			ports:    serverPorts{client: ports[3*i], route: ports[3*i+1], monitor: ports[3*i+2]},
			confPath: filepath.Join(cfg.Dir, name+".conf"),
			storeDir: filepath.Join(cfg.Dir, name),
			logPath:  filepath.Join(cfg.Dir, name+".log"),
		}
		if err := os.MkdirAll(s.storeDir, 0o755); err != nil {
			return nil, fmt.Errorf("natsproc store of %s: %w", name, err)
		}
		c.ports = append(c.ports, s.ports)
		c.servers = append(c.servers, s)
		c.index[name] = i
	}
	return c, nil
}

// Start is New followed by StartAll: every server runs and accepts client
// connections when it returns. JetStream may not be usable yet (a cluster
// still elects its meta leader); WaitReady waits for that. On error nothing
// is left running.
func Start(cfg Config) (*Cluster, error) {
	c, err := New(cfg)
	if err != nil {
		return nil, err
	}
	if err := c.StartAll(); err != nil {
		return nil, errors.Join(err, c.Close())
	}
	return c, nil
}

// StartAll starts every server that is not running, all at once (a cluster
// member's routes wait for its peers, so one at a time would only be slower).
func (c *Cluster) StartAll() error {
	errs := make([]error, len(c.servers))
	var wg sync.WaitGroup
	for i, s := range c.servers {
		wg.Go(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.running() {
				return
			}
			errs[i] = c.startLocked(s)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Start starts server i on its ports with its store (and rewrites its config
// file) and returns once it accepts client connections. It fails with
// ErrRunning if the server runs, and with the tail of its log if the process
// exits first or does not listen within Config.StartTimeout.
func (c *Cluster) Start(i int) error {
	s := c.servers[i]
	s.mu.Lock()
	defer s.mu.Unlock()
	return c.startLocked(s)
}

func (c *Cluster) startLocked(s *server) error {
	if c.closed.Load() {
		return fmt.Errorf("start %s: %w", s.name, ErrClosed)
	}
	return c.start(s)
}

// Restart stops server i gracefully if it runs (as Stop) and starts it again
// on the same ports and store (as Start).
func (c *Cluster) Restart(i int) error {
	s := c.servers[i]
	s.mu.Lock()
	defer s.mu.Unlock()
	stopErr := c.stop(s)
	if s.running() {
		return stopErr
	}
	// Down either way; the stop error (ErrStopTimeout, an exit status)
	// tells how it went down.
	return errors.Join(stopErr, c.startLocked(s))
}

// Kill SIGKILLs server i, as a crash of its host's process would end it: no
// flush, no goodbye to peers or clients. It returns once the process has
// exited; a server that is not running is left so.
func (c *Cluster) Kill(i int) error {
	s := c.servers[i]
	s.mu.Lock()
	defer s.mu.Unlock()
	return c.kill(s)
}

// Stop shuts server i down gracefully with SIGTERM and returns once the
// process has exited. If it is still running after Config.StopTimeout it is
// SIGKILLed and Stop returns ErrStopTimeout; either way it is down. A server
// that is not running is left so.
func (c *Cluster) Stop(i int) error {
	s := c.servers[i]
	s.mu.Lock()
	defer s.mu.Unlock()
	return c.stop(s)
}

// Pause freezes server i with SIGSTOP: its sockets stay open but it answers
// nothing, as a server stalled by its host (GC, swap, a VM pause) would; its
// peers and clients see it only by timeouts. A nats.go client connected to
// it gives it up only after nats.MaxPingsOutstanding unanswered pings every
// nats.PingInterval, 2 × 2 minutes by default, and until then its requests
// time out: tests that pause servers want a ping interval of a fraction of
// a second. The server stays Running.
func (c *Cluster) Pause(i int) error {
	s := c.servers[i]
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.signal(syscall.SIGSTOP); err != nil {
		return fmt.Errorf("pause %s: %w", s.name, err)
	}
	s.paused = true
	c.mark(s, "SIGSTOP pid %d", s.proc.cmd.Process.Pid)
	return nil
}

// Resume continues server i after Pause with SIGCONT.
func (c *Cluster) Resume(i int) error {
	s := c.servers[i]
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.signal(syscall.SIGCONT); err != nil {
		return fmt.Errorf("resume %s: %w", s.name, err)
	}
	s.paused = false
	c.mark(s, "SIGCONT pid %d", s.proc.cmd.Process.Pid)
	return nil
}

// Running reports whether server i's process is running (paused or not).
// A process that crashed is not running.
func (c *Cluster) Running(i int) bool {
	s := c.servers[i]
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running()
}

// Paused reports whether server i is running and paused by Pause.
func (c *Cluster) Paused(i int) bool {
	s := c.servers[i]
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running() && s.paused
}

// Close stops every server gracefully (as Stop, all at once) and waits for
// all of them and the Cluster's goroutines. Later Starts fail with
// ErrClosed. The files in Dir are left for a test to inspect. Close is
// idempotent.
func (c *Cluster) Close() error {
	c.closed.Store(true)
	errs := make([]error, len(c.servers))
	var wg sync.WaitGroup
	for i := range c.servers {
		wg.Go(func() { errs[i] = c.Stop(i) })
	}
	wg.Wait()
	c.wg.Wait()
	return errors.Join(errs...)
}

// Size is the number of servers.
func (c *Cluster) Size() int { return len(c.servers) }

// Name is server i's server_name: n<i+1>.
func (c *Cluster) Name(i int) string { return c.servers[i].name }

// Index maps a server name (as in a stream's or the meta group's leader) to
// the server's index, failing with ErrUnknownServer for a name not of this
// Cluster.
func (c *Cluster) Index(name string) (int, error) {
	i, ok := c.index[name]
	if !ok {
		return 0, fmt.Errorf("%w: %q (servers are n1..n%d)", ErrUnknownServer, name, len(c.servers))
	}
	return i, nil
}

// URL is the client URL of server i, nats://127.0.0.1:<port>.
func (c *Cluster) URL(i int) string {
	return "nats://127.0.0.1:" + strconv.Itoa(c.servers[i].ports.client)
}

// URLs are the client URLs of all servers, by index.
func (c *Cluster) URLs() []string {
	urls := make([]string, len(c.servers))
	for i := range c.servers {
		urls[i] = c.URL(i)
	}
	return urls
}

// ConnectURL is URLs joined by commas, the form nats.Connect takes: a client
// given it knows every server, so it reconnects to a live one when its own
// goes down, and can connect before any of them started (with
// nats.RetryOnFailedConnect).
func (c *Cluster) ConnectURL() string { return strings.Join(c.URLs(), ",") }

// MonitorURL is the base URL of server i's monitoring endpoint
// (http://127.0.0.1:<port>; /healthz, /jsz, /varz below it).
func (c *Cluster) MonitorURL(i int) string {
	return "http://127.0.0.1:" + strconv.Itoa(c.servers[i].ports.monitor)
}

// LogPath is the file that collects server i's output across all its runs,
// with a "=== natsproc" line at each start, signal and exit.
func (c *Cluster) LogPath(i int) string { return c.servers[i].logPath }

// StoreDir is server i's JetStream store directory.
func (c *Cluster) StoreDir(i int) string { return c.servers[i].storeDir }

// LogTail returns up to limit bytes from the end of server i's log, headed
// by its name: what a failing test prints.
func (c *Cluster) LogTail(i, limit int) string { return c.tail(c.servers[i], limit) }

// Pid is the process id of server i's running process, or 0.
func (c *Cluster) Pid(i int) int {
	s := c.servers[i]
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.running() {
		return 0
	}
	return s.proc.cmd.Process.Pid
}
