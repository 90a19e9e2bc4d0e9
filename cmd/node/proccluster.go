package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/examples/apps"
	"github.com/eddyrt/eddy/internal/natsproc"
	"github.com/eddyrt/eddy/internal/procs"
)

// procCluster runs eddy nodes as separate processes on loopback, each its
// own `node run` with a gossip, Raft and HTTP port, against NATS: a server
// started in this process (JetStream on disk), or nats-server processes
// (internal/natsproc), one or a JetStream cluster, that can be killed and
// restarted under the nodes. `node demo`, `node bench failover` and the
// multi-process tests use it; a node can be killed (SIGKILL), paused
// (SIGSTOP), stopped (SIGTERM) and started again with its data.
type procCluster struct {
	procConfig
	types []string // the actor types of cfg.Apps, as /v1/cluster names them

	srv     *server.Server    // NATS in this process (NATSServers 0)
	nats    *natsproc.Cluster // NATS as processes (NATSServers > 0)
	natsURL string            // every NATS server's URL, comma-separated
	nc      *nats.Conn
	client  *eddy.Client
	hc      *http.Client

	mu    sync.Mutex
	nodes map[string]*procNode
	order []string
}

// procConfig is what a procCluster runs.
type procConfig struct {
	Dir        string            // nodes' data dirs and logs, and NATS's store and logs
	Exe        string            // the node binary
	Env        []string          // extra environment of node processes
	Apps       []string          // the example apps every node runs (--app); none means the bank
	Partitions int               // of each actor type
	Replicas   int               // hot replicas per partition
	ExtraArgs  []string          // more `node run` flags, for every node
	Zones      map[string]string // node id -> --zone

	// NATSServers is how NATS runs: 0, a server inside this process; 1, a
	// nats-server process; 3, a JetStream cluster of nats-server
	// processes, on which the nodes create their streams with 3 replicas.
	// The processes fsync every write before acknowledging it
	// (sync_interval: always), the production setting.
	NATSServers int
	// NATSLater leaves the nats-server processes to startNATS, so that the
	// nodes can start first (NATSServers > 0 only).
	NATSLater bool
	// Logf, if set, is told where long waits stand, every 2 s.
	Logf func(format string, args ...any)
}

// procNode is one node process.
type procNode struct {
	id                 string
	gossip, raft, http string // loopback addresses, kept across restarts
	cmd                *exec.Cmd
	exited             chan struct{}
	logPath            string
}

// natsReadyTimeout bounds the wait for JetStream on new nats-server
// processes: ready in well under a second here, ~6 s when a cluster's first
// meta election times out, more on a loaded CI machine.
const natsReadyTimeout = time.Minute

// newProcCluster starts NATS as cfg says (the nats-server processes only
// later, with startNATS, if cfg.NATSLater) and connects a client; start
// starts the nodes. A procCluster returned with an error must still be
// closed.
func newProcCluster(cfg procConfig) (*procCluster, error) {
	if len(cfg.Apps) == 0 {
		cfg.Apps = []string{"bank"}
	}
	if cfg.NATSLater && cfg.NATSServers == 0 {
		return nil, errors.New("procCluster: NATSLater needs nats-server processes (NATSServers > 0)")
	}
	c := &procCluster{procConfig: cfg, nodes: map[string]*procNode{}, hc: &http.Client{Timeout: 5 * time.Second}}
	for _, app := range cfg.Apps {
		ts, err := apps.ActorTypes(app, cfg.Partitions)
		if err != nil {
			return nil, err
		}
		for _, t := range ts {
			c.types = append(c.types, t.Name)
		}
	}
	var err error
	if cfg.NATSServers == 0 {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		opts := &server.Options{ServerName: "eddy-demo", Host: "127.0.0.1", Port: port, JetStream: true,
			StoreDir: filepath.Join(cfg.Dir, "nats"), NoSigs: true, NoLog: true}
		if c.srv, err = server.NewServer(opts); err != nil {
			return nil, err
		}
		c.srv.Start()
		if !c.srv.ReadyForConnections(10 * time.Second) {
			return c, errors.New("NATS server did not start")
		}
		c.natsURL = c.srv.ClientURL()
	} else {
		c.nats, err = natsproc.New(natsproc.Config{Servers: cfg.NATSServers, Dir: filepath.Join(cfg.Dir, "nats"), SyncAlways: true})
		if err != nil {
			return nil, err
		}
		c.natsURL = c.nats.ConnectURL()
		if !cfg.NATSLater {
			if err := c.startNATS(context.Background()); err != nil {
				return c, err
			}
		}
	}
	// The producers' connection: it may be made before NATS runs, and
	// follows a restarted or another server.
	if c.nc, err = nats.Connect(c.natsURL, nats.Name("eddy procCluster"), nats.MaxReconnects(-1),
		nats.ReconnectWait(100*time.Millisecond), nats.RetryOnFailedConnect(true)); err != nil {
		return c, err
	}
	if c.client, err = eddy.NewClient(c.nc); err != nil {
		return c, err
	}
	return c, nil
}

// startNATS starts the nats-server processes that are not running and
// waits until JetStream answers on every one.
func (c *procCluster) startNATS(ctx context.Context) error {
	if err := c.nats.StartAll(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, natsReadyTimeout)
	defer cancel()
	return c.nats.WaitReady(ctx)
}

// freePort returns a loopback port free for TCP and UDP (gossip uses both)
// now, from below the kernel's ephemeral range and never handed out twice
// in this process (procs.PickPorts): a port the kernel hands out for ":0"
// can be taken as the source port of an outgoing connection before the
// node binds it.
func freePort() (int, error) {
	for range 20 {
		ps, err := procs.PickPorts(1)
		if err != nil {
			return 0, err
		}
		u, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(ps[0])))
		if err == nil {
			u.Close()
			return ps[0], nil
		}
	}
	return 0, errors.New("no free port")
}

// start starts node id: a new one gets fresh ports and joins the running
// nodes (expect > 0: the cluster forms once that many have gossiped); a
// known one restarts on its ports with its data.
func (c *procCluster) start(id string, expect int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[id]
	if n == nil {
		n = &procNode{id: id, logPath: filepath.Join(c.Dir, id+".log")}
		for _, p := range []*string{&n.gossip, &n.raft, &n.http} {
			port, err := freePort()
			if err != nil {
				return err
			}
			*p = "127.0.0.1:" + strconv.Itoa(port)
		}
		c.nodes[id] = n
		c.order = append(c.order, id)
	} else if n.running() {
		return fmt.Errorf("%s is running", id)
	}
	var join []string
	for _, o := range c.order {
		if o != id {
			join = append(join, c.nodes[o].gossip)
		}
	}
	args := []string{"run", "--app", strings.Join(c.Apps, ","), "--partitions", strconv.Itoa(c.Partitions), "--replicas", strconv.Itoa(c.Replicas),
		"--node-id", id, "--data-dir", filepath.Join(c.Dir, id), "--nats", c.natsURL,
		"--gossip", n.gossip, "--raft", n.raft, "--http", n.http, "--log-format", "json", "--leave-timeout", "10s"}
	if c.NATSServers >= 3 {
		args = append(args, "--stream-replicas", "3")
	}
	if len(join) > 0 {
		args = append(args, "--join", strings.Join(join, ","))
	}
	if expect > 0 {
		args = append(args, "--expect", strconv.Itoa(expect))
	}
	if z := c.Zones[id]; z != "" {
		args = append(args, "--zone", z)
	}
	args = append(args, c.ExtraArgs...)
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(c.Exe, args...)
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.Stdout, cmd.Stderr = io.Discard, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	n.cmd, n.exited = cmd, make(chan struct{})
	go func(exited chan struct{}) {
		_ = cmd.Wait()
		logf.Close()
		close(exited)
	}(n.exited)
	return nil
}

func (n *procNode) running() bool {
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

func (c *procCluster) node(id string) *procNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[id]
}

// running lists the nodes whose process runs.
func (c *procCluster) running() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ids []string
	for _, id := range c.order {
		if c.nodes[id].running() {
			ids = append(ids, id)
		}
	}
	return ids
}

// signal sends sig to node id's process.
func (c *procCluster) signal(id string, sig syscall.Signal) error {
	n := c.node(id)
	if n == nil || !n.running() {
		return fmt.Errorf("%s is not running", id)
	}
	return n.cmd.Process.Signal(sig)
}

// kill SIGKILLs node id and waits for the process to end.
func (c *procCluster) kill(id string) error {
	if err := c.signal(id, syscall.SIGKILL); err != nil {
		return err
	}
	<-c.node(id).exited
	return nil
}

// stop SIGTERMs node id (a graceful leave) and waits up to timeout.
func (c *procCluster) stop(id string, timeout time.Duration) error {
	if err := c.signal(id, syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-c.node(id).exited:
		return nil
	case <-time.After(timeout):
		_ = c.signal(id, syscall.SIGKILL)
		<-c.node(id).exited
		return fmt.Errorf("%s did not stop within %v; killed", id, timeout)
	}
}

// close stops every node (SIGKILL: the data stays) and NATS.
func (c *procCluster) close() {
	for _, id := range c.running() {
		_ = c.signal(id, syscall.SIGCONT)
		_ = c.kill(id)
	}
	if c.nc != nil {
		c.nc.Close()
	}
	if c.srv != nil {
		c.srv.Shutdown()
		c.srv.WaitForShutdown()
	}
	if c.nats != nil {
		_ = c.nats.Close()
	}
}

// logged returns the JSON log lines of node id with message msg logged at
// or after since, decoded.
func (c *procCluster) logged(id, msg string, since time.Time) []map[string]any {
	b, err := os.ReadFile(c.node(id).logPath)
	if err != nil {
		return nil
	}
	var out []map[string]any
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.Contains(l, `"msg":"`+msg+`"`) {
			continue
		}
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) != nil {
			continue
		}
		if t, err := time.Parse(time.RFC3339Nano, fmt.Sprint(m["time"])); err == nil && !t.Before(since) {
			out = append(out, m)
		}
	}
	return out
}

// getJSON GETs path from node id's HTTP API into v.
func (c *procCluster) getJSON(ctx context.Context, id, path string, v any) error {
	n := c.node(id)
	if n == nil {
		return fmt.Errorf("no node %s", id)
	}
	if err := procs.GetJSON(ctx, c.hc, "http://"+n.http+path, v); err != nil {
		return fmt.Errorf("%s: %w", id, err)
	}
	return nil
}

func (c *procCluster) clusterStatus(ctx context.Context, id string) (eddy.ClusterStatus, error) {
	var st eddy.ClusterStatus
	return st, c.getJSON(ctx, id, "/v1/cluster", &st)
}

func (c *procCluster) partitionStatus(ctx context.Context, id string) ([]eddy.PartitionStatus, error) {
	var body struct {
		Partitions []eddy.PartitionStatus `json:"partitions"`
	}
	return body.Partitions, c.getJSON(ctx, id, "/v1/status", &body)
}

// partKey names one partition of one actor type.
type partKey struct {
	typ string
	p   int
}

func (k partKey) String() string { return k.typ + "/" + strconv.Itoa(k.p) }

// settled checks, on the running nodes in ids, that they agree on a leader,
// every partition of every actor type is active on one of them and running
// there (as /v1/cluster reports its state), not given back, balanced (each
// node holds P/N of each type rounded down or up), no move is in progress,
// and each node runs exactly the partition actors assigned to it, restored
// and at the assigned epoch. It returns the assignment.
func (c *procCluster) settled(ctx context.Context, ids []string) (eddy.ClusterStatus, error) {
	var first eddy.ClusterStatus
	for i, id := range ids {
		st, err := c.clusterStatus(ctx, id)
		if err != nil {
			return first, err
		}
		if st.Leader == "" || !slices.Contains(ids, st.Leader) {
			return first, fmt.Errorf("%s sees leader %q", id, st.Leader)
		}
		if i == 0 {
			first = st
		} else if st.Leader != first.Leader {
			return first, fmt.Errorf("%s sees leader %s, %s sees %s", ids[0], first.Leader, id, st.Leader)
		}
	}
	if want := len(c.types) * c.Partitions; len(first.Partitions) != want {
		return first, fmt.Errorf("%d partitions assigned, want %d (%d of each of %v)", len(first.Partitions), want, c.Partitions, c.types)
	}
	want := map[string]map[partKey]uint64{} // node -> its actives and their epochs
	for _, p := range first.Partitions {
		k := partKey{p.Type, p.Partition}
		switch {
		case !slices.Contains(ids, p.Active) || p.MovingTo != "":
			return first, fmt.Errorf("partition %s: active %q, moving to %q", k, p.Active, p.MovingTo)
		case p.GivenBack != "":
			return first, fmt.Errorf("partition %s: given back by %s: %s", k, p.Active, p.GivenBack)
		case p.State != "running":
			return first, fmt.Errorf("partition %s on %s at epoch %d: %s %s", k, p.Active, p.Epoch, p.State, p.Err)
		}
		if want[p.Active] == nil {
			want[p.Active] = map[partKey]uint64{}
		}
		want[p.Active][k] = p.Epoch
	}
	lo, hi := c.Partitions/len(ids), (c.Partitions+len(ids)-1)/len(ids)
	for _, id := range ids {
		for _, typ := range c.types {
			n := 0
			for k := range want[id] {
				if k.typ == typ {
					n++
				}
			}
			if n < lo || n > hi {
				return first, fmt.Errorf("%s holds %d actives of %s, want %d to %d", id, n, typ, lo, hi)
			}
		}
		ps, err := c.partitionStatus(ctx, id)
		if err != nil {
			return first, err
		}
		got := map[partKey]uint64{}
		for _, p := range ps {
			if p.Running {
				got[partKey{p.Type, p.Partition}] = p.Epoch
			}
		}
		if len(got) != len(want[id]) || len(ps) != len(want[id]) {
			return first, fmt.Errorf("%s runs %d partitions (%d restored), %d assigned", id, len(ps), len(got), len(want[id]))
		}
		for k, e := range want[id] {
			if got[k] != e {
				return first, fmt.Errorf("%s: partition %s at epoch %d, assigned %d", id, k, got[k], e)
			}
		}
	}
	return first, nil
}

// waitSettled polls settled until it holds or timeout passes.
func (c *procCluster) waitSettled(ctx context.Context, ids []string, timeout time.Duration) (eddy.ClusterStatus, error) {
	deadline := time.Now().Add(timeout)
	for {
		st, err := c.settled(ctx, ids)
		if err == nil {
			return st, nil
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("not settled after %v: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// waitCommitted waits until every partition of every actor type runs and has
// committed after since, as /v1/cluster on the nodes in ids (asked in turn)
// reports, and returns how long after since the last of them committed
// first, and which partition that was. A partition's first commit after
// since is taken as its last_commit at the first poll that shows one after
// since: late by at most a poll (50 ms plus the time /v1/cluster takes to
// answer).
func (c *procCluster) waitCommitted(ctx context.Context, ids []string, since time.Time, timeout time.Duration) (time.Duration, string, error) {
	deadline := time.Now().Add(timeout)
	first := map[partKey]time.Time{}
	want := len(c.types) * c.Partitions
	lastLog := time.Now()
	for poll := 0; ; poll++ {
		st, err := c.clusterStatus(ctx, ids[poll%len(ids)])
		if err == nil && len(st.Partitions) != want {
			err = fmt.Errorf("%d partitions assigned, want %d", len(st.Partitions), want)
		}
		if err == nil {
			var waiting []string
			for _, p := range st.Partitions {
				k := partKey{p.Type, p.Partition}
				if _, ok := first[k]; ok {
					continue
				}
				if p.State == "running" && p.LastCommit.After(since) {
					first[k] = p.LastCommit
					continue
				}
				waiting = append(waiting, fmt.Sprintf("%s on %s: %s %s, last commit %s, input lag %d", k, p.Active, p.State, p.Err, p.LastCommit.Format("15:04:05.000"), p.InputLag))
			}
			if len(waiting) == 0 {
				var latest time.Time
				var slowest partKey
				for k, t := range first {
					if t.After(latest) {
						latest, slowest = t, k
					}
				}
				return latest.Sub(since), slowest.String(), nil
			}
			err = fmt.Errorf("%d partitions not committed since %s: %s", len(waiting), since.Format("15:04:05.000"), strings.Join(waiting, "; "))
		}
		if c.Logf != nil && time.Since(lastLog) >= 2*time.Second {
			lastLog = time.Now()
			c.Logf("waiting for commits: %v", err)
		}
		if time.Now().After(deadline) {
			return 0, "", fmt.Errorf("not every partition committed within %v: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return 0, "", ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// logTails returns the last lines of every node's log and the end of every
// nats-server's log: what a failed test prints.
func (c *procCluster) logTails(lines int) string {
	var b strings.Builder
	c.mu.Lock()
	order := slices.Clone(c.order)
	c.mu.Unlock()
	for _, id := range order {
		data, _ := os.ReadFile(c.node(id).logPath)
		ls := strings.Split(strings.TrimSpace(string(data)), "\n")
		fmt.Fprintf(&b, "--- last %d log lines of %s:\n%s\n", min(lines, len(ls)), id, strings.Join(ls[max(0, len(ls)-lines):], "\n"))
	}
	if c.nats != nil {
		for i := range c.nats.Size() {
			fmt.Fprintf(&b, "%s\n", c.nats.LogTail(i, 8<<10))
		}
	}
	return b.String()
}

// waitReplicasWarm waits until every hot replica reported a lag under 1000
// records, so that a kill measures a promotion rather than a warm-up.
func (c *procCluster) waitReplicasWarm(ctx context.Context, id string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		st, err := c.clusterStatus(ctx, id)
		warm := err == nil
		for _, p := range st.Partitions {
			warm = warm && len(p.Replicas) >= min(c.Replicas, 1)
			for _, r := range p.Replicas {
				warm = warm && r.Reported && r.LagRecords < 1000
			}
		}
		if warm {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("replicas not warm within %v", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// bankLoad funds accounts once and then sends random transfers between them
// at a steady rate, counting what it sent: the bank's invariants are checked
// against these counts.
type bankLoad struct {
	c         *procCluster
	accounts  []string
	deposited int64
	mu        sync.Mutex
	transfers int64 // transfers sent (each debited once or rejected once)
}

func newBankLoad(c *procCluster, accounts int) *bankLoad {
	l := &bankLoad{c: c}
	for i := range accounts {
		l.accounts = append(l.accounts, fmt.Sprintf("acct-%05d", i))
	}
	return l
}

// fund deposits 1000 into every account, 32 sends at a time.
func (l *bankLoad) fund(ctx context.Context) error {
	const amount = 1000
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for w := range 32 {
		wg.Go(func() {
			for i := w; i < len(l.accounts); i += 32 {
				if err := l.c.client.SendWithID(ctx, apps.BankType, l.accounts[i], "deposit-"+l.accounts[i], apps.Op{Kind: "deposit", Amount: amount}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	l.deposited = amount * int64(len(l.accounts))
	return nil
}

// run sends rate transfers per second until ctx ends.
func (l *bankLoad) run(ctx context.Context, rate float64, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 7))
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	start, sent := time.Now(), 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		due := int(rate*time.Since(start).Seconds()) - sent
		for range due {
			from, to := l.accounts[rng.IntN(len(l.accounts))], l.accounts[rng.IntN(len(l.accounts))]
			if err := l.send(from, to, 1+rng.Int64N(100), fmt.Sprintf("t-%d-%d", seed, sent)); err != nil {
				return err
			}
			sent++
			l.mu.Lock()
			l.transfers++
			l.mu.Unlock()
		}
	}
}

// send sends one transfer, retrying with the same message id (JetStream
// stores it once) until it is acknowledged. It does not stop with the
// load's context: a send cut off midway might or might not be stored, and
// the count of sent transfers must be exact.
func (l *bankLoad) send(from, to string, amount int64, id string) error {
	var err error
	for range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = l.c.client.SendWithID(ctx, apps.BankType, from, id, apps.Op{Kind: "transfer", Amount: amount, To: to})
		cancel()
		if err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

func (l *bankLoad) sent() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.transfers
}

// totals reads every account from node id's HTTP API (each read routed to
// the account's owner) and sums them.
func (l *bankLoad) totals(ctx context.Context, id string) (apps.Account, error) {
	var sum apps.Account
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for _, a := range l.accounts {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			var body struct {
				Value apps.Account `json:"value"`
			}
			err := l.c.getJSON(ctx, id, "/v1/state/bank/"+a, &body)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				firstErr = cmpErr(firstErr, err)
				return
			}
			sum.Balance += body.Value.Balance
			sum.Deposited += body.Value.Deposited
			sum.Debits += body.Value.Debits
			sum.Credits += body.Value.Credits
			sum.Rejected += body.Value.Rejected
		})
	}
	wg.Wait()
	return sum, firstErr
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// checkTotals compares totals with what the load sent: every deposit and
// every transfer applied exactly once, every credit delivered once.
func (l *bankLoad) checkTotals(sum apps.Account) error {
	sent := l.sent()
	switch {
	case sum.Deposited != l.deposited:
		return fmt.Errorf("deposited %d, sent %d", sum.Deposited, l.deposited)
	case sum.Debits+sum.Rejected != sent:
		return fmt.Errorf("debits %d + rejected %d = %d transfers applied, %d sent", sum.Debits, sum.Rejected, sum.Debits+sum.Rejected, sent)
	case sum.Debits != sum.Credits:
		return fmt.Errorf("debits %d, credits %d", sum.Debits, sum.Credits)
	case sum.Balance != sum.Deposited:
		return fmt.Errorf("balances add up to %d, deposited %d", sum.Balance, sum.Deposited)
	}
	return nil
}

// waitTotals waits until the totals read through node id satisfy checkTotals.
func (l *bankLoad) waitTotals(ctx context.Context, id string, timeout time.Duration) (apps.Account, error) {
	deadline := time.Now().Add(timeout)
	for {
		sum, err := l.totals(ctx, id)
		if err == nil {
			if err = l.checkTotals(sum); err == nil {
				return sum, nil
			}
		}
		if time.Now().After(deadline) {
			return sum, fmt.Errorf("bank invariants after %v: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return sum, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
