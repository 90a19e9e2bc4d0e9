package eddy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/examples/apps"
)

// The environment of a crash child: TestCrashChild runs a node only when
// envCrashNATS is set, so a plain `go test` skips it.
const (
	envCrashNATS     = "EDDY_CRASH_CHILD_NATS"      // the parent's NATS server
	envCrashDir      = "EDDY_CRASH_CHILD_DIR"       // the node's DataDir, the same for every incarnation
	envCrashHTTPFile = "EDDY_CRASH_CHILD_HTTP_FILE" // if set, serve HTTP and write its address here
)

// crashPartitions is the partition count of every actor type of the crash test.
const crashPartitions = 4

// crashNodeConfig is the node config of the crash test, shared by the child
// process and the parent's final in-process node so that both open the same
// stores. A small batch makes many commits, hence many places to crash.
func crashNodeConfig(natsURL, dataDir string, log *slog.Logger) eddy.Config {
	cfg := eddy.DefaultConfig()
	cfg.NodeID = "crash"
	cfg.NATSURL = natsURL
	cfg.DataDir = dataDir
	cfg.HTTPAddr = ""
	cfg.BatchSize = 50
	cfg.CacheSize = 8 << 20
	cfg.Logger = log
	return cfg
}

// registerCrashApps registers the bank and the word count.
func registerCrashApps(n *eddy.Node) error {
	types := append([]eddy.ActorType{apps.Bank(crashPartitions)}, apps.WordCount(crashPartitions)...)
	for _, at := range types {
		if err := n.Register(at); err != nil {
			return err
		}
	}
	return nil
}

// crashChild is one incarnation of the child process: the test binary
// re-executed to run TestCrashChild. Its stdout and stderr (the node's logs)
// are kept for the failure report.
type crashChild struct {
	n       int
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	out     *lockedBuffer
	started time.Time
	// nodeStarted is closed when the node's Start has returned (its partitions
	// are restoring), running when every partition has restored and runs.
	nodeStarted, running <-chan struct{}
	exited               chan struct{}
	err                  error // how the process ended; read after exited is closed
}

// startCrashChild starts incarnation n with env added to the parent's environment.
func startCrashChild(t *testing.T, n int, env ...string) *crashChild {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	c := &crashChild{n: n, cmd: cmd, out: &lockedBuffer{}, exited: make(chan struct{})}
	c.nodeStarted = c.out.when(crashNodeStarted)
	c.running = c.out.when(crashAllRunning)
	cmd.Stdout, cmd.Stderr = c.out, c.out
	var err error
	// The child runs until its stdin closes: when the parent stops it, or dies.
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatalf("child %d: %v", n, err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("child %d: start: %v", n, err)
	}
	c.started = time.Now()
	go func() {
		c.err = cmd.Wait()
		close(c.exited)
	}()
	return c
}

// alive reports whether the process has not exited yet.
func (c *crashChild) alive() bool {
	select {
	case <-c.exited:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL (Process.Kill on Unix) and waits for the process to end.
func (c *crashChild) kill() {
	_ = c.cmd.Process.Kill()
	<-c.exited
}

// stop closes the child's stdin, which makes it stop its node and exit, and
// waits up to timeout for that.
func (c *crashChild) stop(timeout time.Duration) error {
	_ = c.stdin.Close()
	select {
	case <-c.exited:
		return c.err
	case <-time.After(timeout):
		c.kill()
		return fmt.Errorf("child %d did not stop within %v; killed", c.n, timeout)
	}
}

// What a child writes to stderr when its node's Start has returned (the
// partitions restore), and when every partition has restored and runs.
const (
	crashNodeStarted = "crash child: node started"
	crashAllRunning  = "crash child: all partitions running"
)

// lockedBuffer is a bytes.Buffer safe for a writer and concurrent readers,
// which closes a channel once a given line has been written.
type lockedBuffer struct {
	mu       sync.Mutex
	b        bytes.Buffer
	watchers []logWatcher
}

type logWatcher struct {
	line []byte
	seen chan struct{}
}

// when returns a channel closed once line has been written.
func (b *lockedBuffer) when(line string) <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	w := logWatcher{line: []byte(line), seen: make(chan struct{})}
	b.watchers = append(b.watchers, w)
	b.check()
	return w.seen
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.b.Write(p)
	b.check()
	return n, err
}

// check closes the channels of the lines written so far.
func (b *lockedBuffer) check() {
	for _, w := range b.watchers {
		select {
		case <-w.seen:
		default:
			if bytes.Contains(b.b.Bytes(), w.line) {
				close(w.seen)
			}
		}
	}
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// crashModel is the sequential model of the published input: what the state
// must be once every event has been processed exactly once.
type crashModel struct {
	accounts  map[string]*apps.Account
	words     map[string]int64
	deposits  int   // deposit events
	deposited int64 // their total
	transfers int   // transfer events (none is ever rejected: balances stay far above any debit)
	lines     int
	wordsSent int64 // words in all lines
}

func newCrashModel(accounts []string) *crashModel {
	m := &crashModel{accounts: map[string]*apps.Account{}, words: map[string]int64{}}
	for _, a := range accounts {
		m.accounts[a] = &apps.Account{}
	}
	return m
}

func (m *crashModel) deposit(acct string, amount int64) {
	a := m.accounts[acct]
	a.Balance += amount
	a.Deposited += amount
	m.deposits++
	m.deposited += amount
}

func (m *crashModel) transfer(from, to string, amount int64) {
	m.accounts[from].Balance -= amount
	m.accounts[from].Debits++
	m.accounts[to].Balance += amount
	m.accounts[to].Credits++
	m.transfers++
}

func (m *crashModel) line(words []string) {
	for _, w := range words {
		m.words[w]++
	}
	m.wordsSent += int64(len(words))
	m.lines++
}

// httpState reads the committed state of a key from a node's HTTP API into v;
// it reports false when the key has no state yet.
func httpState(ctx context.Context, hc *http.Client, addr, typ, key string, v any) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/state/"+typ+"/"+key, nil)
	if err != nil {
		return false, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return false, err
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return false, nil
	default:
		return false, fmt.Errorf("GET state %s/%s: %s: %s", typ, key, resp.Status, body)
	}
	var r struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return false, fmt.Errorf("GET state %s/%s: %w", typ, key, err)
	}
	return true, json.Unmarshal(r.Value, v)
}

// waitFile waits for a file to appear with content, or fails after timeout.
func waitFile(path string, timeout time.Duration, alive func() bool) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(path)
		if err == nil && len(b) > 0 {
			return string(b), nil
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		if !alive() {
			return "", fmt.Errorf("the process that writes %s exited", path)
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%s not written within %v", path, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
