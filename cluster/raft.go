package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

const (
	// raftSnapshotsRetained is how many snapshots the file snapshot store keeps:
	// the newest, and one to fall back on if it turns out unreadable.
	raftSnapshotsRetained = 2
	// formationPoll is how often a node that holds no Raft state yet looks
	// whether it was bootstrapped or added, or whether it should bootstrap.
	formationPoll = 100 * time.Millisecond
)

// ErrNotLeader is returned by Apply and Barrier on a node that is not the Raft
// leader: the command was not applied. The error names the leader when one is
// known (Leader says it too); send the command there.
var ErrNotLeader = errors.New("cluster: not the raft leader")

// RaftConfig configures a node's Raft server, which replicates the assignment
// FSM to every node and elects the assignor.
type RaftConfig struct {
	// NodeID is the node's Raft server id: the gossip NodeID.
	NodeID string
	// BindAddr is the host:port the Raft TCP transport listens on; port 0 picks
	// a free port (Addr reports it, and StartRaft gossips it).
	BindAddr string
	// AdvertiseAddr is the host:port other nodes reach the transport at; empty
	// means BindAddr, which then must not be 0.0.0.0.
	AdvertiseAddr string
	// DataDir is the node's data directory. Raft keeps its log and stable store
	// in DataDir/raft/raft.db (bbolt) and its snapshots in DataDir/raft/snapshots.
	DataDir string

	// Bootstrap makes this node a one-voter cluster on first start (it holds no
	// Raft state yet). Others join it through gossip.
	Bootstrap bool
	// BootstrapExpect forms a new cluster once that many nodes running Raft
	// have gossiped (like Consul's bootstrap-expect): the one with the lowest id
	// among the BootstrapExpect lowest ids bootstraps with all of them as
	// voters, the others wait to be contacted. Give every node of a new cluster
	// the same value. A node never bootstraps beside a member that already
	// holds Raft state, nor after it has state itself.
	BootstrapExpect int
	// BootstrapSettle is how long the set of nodes must stay unchanged before
	// BootstrapExpect acts, so that nodes whose views still differ do not form
	// two clusters.
	BootstrapSettle time.Duration

	// HeartbeatTimeout is how long a follower waits without hearing from the
	// leader before it calls an election.
	HeartbeatTimeout time.Duration
	// ElectionTimeout is how long a candidate waits for votes before it tries
	// again.
	ElectionTimeout time.Duration
	// LeaderLeaseTimeout is how long a leader stays leader without contact
	// with a quorum; at most HeartbeatTimeout.
	LeaderLeaseTimeout time.Duration
	// CommitTimeout is how long the leader waits, without new Applies, before
	// it sends followers the commit index.
	CommitTimeout time.Duration
	// BatchApplyCh batches concurrent Applies into one log write. Apply may
	// then wait longer than its timeout.
	BatchApplyCh bool
	// SnapshotThreshold is how many log entries since the last snapshot make
	// the next snapshot due.
	SnapshotThreshold uint64
	// SnapshotInterval is how often Raft checks SnapshotThreshold.
	SnapshotInterval time.Duration
	// TrailingLogs is how many entries a snapshot leaves in the log, so that a
	// follower a little behind catches up from the log, not a snapshot.
	TrailingLogs uint64

	// MaxVoters is how many servers vote (odd, 1 to 7). The leader adds gossip
	// members as voters up to MaxVoters, the rest as non-voters, so that every
	// node holds the FSM; it promotes a non-voter when a voter is removed.
	MaxVoters int
	// DeadGrace is how long a member gossip finds dead (or no longer knows)
	// stays in the Raft configuration before the leader removes it. A member
	// that leaves gracefully is removed as soon as it has left (while it is
	// only leaving, it stays and follows the FSM).
	DeadGrace time.Duration

	// Logger receives the Raft logs, hashicorp/raft's included (nil: slog.Default()).
	Logger *slog.Logger
}

// DefaultRaftConfig returns the tuned config; set NodeID, BindAddr, DataDir
// and one of Bootstrap or BootstrapExpect for the first nodes.
func DefaultRaftConfig() RaftConfig {
	host, _ := os.Hostname()
	return RaftConfig{
		NodeID:             host,                   // as the gossip default
		BindAddr:           "127.0.0.1:7947",       // next to gossip's 7946, on loopback like it
		DataDir:            "data",                 // the node's ./data, beside JetStream's in development
		BootstrapSettle:    time.Second,            // twice what gossip takes to spread a join over a LAN (a few 200 ms rounds)
		HeartbeatTimeout:   300 * time.Millisecond, // new leader ~0.6 s after leader loss, measured (raft's 1 s default: ~2 s)
		ElectionTimeout:    300 * time.Millisecond, // same
		LeaderLeaseTimeout: 150 * time.Millisecond, // a cut-off leader steps down within half a heartbeat timeout
		CommitTimeout:      50 * time.Millisecond,  // raft's default: followers learn of a commit within 50-100 ms when idle
		BatchApplyCh:       true,                   // ~32 k Applies/s instead of ~2.6 k, measured with raft-boltdb
		SnapshotThreshold:  8192,                   // raft's default: the assignment FSM is small, snapshots are cheap
		SnapshotInterval:   30 * time.Second,       // check often; a snapshot happens only past the threshold
		TrailingLogs:       10240,                  // raft's default: a follower minutes behind still catches up from the log
		MaxVoters:          3,                      // survives one failure; 5 survives two at the cost of slower commits
		DeadGrace:          30 * time.Second,       // a crashed process restarted by its supervisor comes back without a membership change
	}
}

// Validate checks the config's fields against each other (raft's own checks
// included).
func (c *RaftConfig) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("cluster: raft config: %s", fmt.Sprintf(format, a...))
	}
	host, _, err := net.SplitHostPort(c.BindAddr)
	switch {
	case c.NodeID == "":
		return bad("no node id")
	case err != nil:
		return bad("bind address %q: %v", c.BindAddr, err)
	case c.AdvertiseAddr == "" && (host == "" || net.ParseIP(host) != nil && net.ParseIP(host).IsUnspecified()):
		return bad("bind address %q is not reachable by other nodes: bind a specific address or set AdvertiseAddr", c.BindAddr)
	case c.DataDir == "":
		return bad("no data dir")
	case c.Bootstrap && c.BootstrapExpect > 0:
		return bad("Bootstrap and BootstrapExpect exclude each other")
	case c.BootstrapExpect < 0:
		return bad("bootstrap expect %d", c.BootstrapExpect)
	case c.MaxVoters < 1 || c.MaxVoters > 7 || c.MaxVoters%2 == 0:
		return bad("max voters %d: use an odd number from 1 to 7 (3 or 5 in practice)", c.MaxVoters)
	case c.BootstrapExpect > c.MaxVoters:
		return bad("bootstrap expect %d exceeds max voters %d", c.BootstrapExpect, c.MaxVoters)
	case c.BootstrapSettle < 0:
		return bad("bootstrap settle %s", c.BootstrapSettle)
	case c.DeadGrace < 0:
		return bad("dead grace %s", c.DeadGrace)
	}
	if c.AdvertiseAddr != "" {
		a, err := net.ResolveTCPAddr("tcp", c.AdvertiseAddr)
		if err != nil {
			return bad("advertise address %q: %v", c.AdvertiseAddr, err)
		}
		if a.IP == nil || a.IP.IsUnspecified() || a.Port == 0 {
			return bad("advertise address %q needs an IP and a port", c.AdvertiseAddr)
		}
	}
	if err := raft.ValidateConfig(c.raftConfig()); err != nil {
		return bad("%v", err)
	}
	return nil
}

func (c *RaftConfig) raftConfig() *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(c.NodeID)
	rc.HeartbeatTimeout = c.HeartbeatTimeout
	rc.ElectionTimeout = c.ElectionTimeout
	rc.LeaderLeaseTimeout = c.LeaderLeaseTimeout
	rc.CommitTimeout = c.CommitTimeout
	rc.BatchApplyCh = c.BatchApplyCh
	rc.SnapshotThreshold = c.SnapshotThreshold
	rc.SnapshotInterval = c.SnapshotInterval
	rc.TrailingLogs = c.TrailingLogs
	// A removed server stays up as a follower outside the configuration (it
	// cannot start elections), so the leader can add it back when it returns.
	rc.ShutdownOnRemove = false
	return rc
}

// RaftServer is one server of the Raft configuration.
type RaftServer struct {
	// ID is the node id.
	ID string
	// Addr is the server's Raft address, host:port.
	Addr string
	// Suffrage is raft.Voter or raft.Nonvoter.
	Suffrage raft.ServerSuffrage
}

// Raft is this node's Raft server. Its methods are safe for concurrent use.
type Raft struct {
	cfg    RaftConfig
	log    *slog.Logger
	raft   *raft.Raft
	trans  *raft.NetworkTransport
	store  *raftboltdb.BoltStore
	gossip *Gossip

	stop        chan struct{}
	wg          sync.WaitGroup
	shutdown    sync.Once
	cancelDials context.CancelFunc // ends the transport's dials in progress (raftStream)

	failedHB chan raft.Observation // heartbeats from this node, as leader, that failed
	observer *raft.Observer

	mu         sync.Mutex // guards the fields below
	leading    bool
	leaderSubs []chan bool
	closed     bool
}

// StartRaft opens the node's Raft state under cfg.DataDir, starts the TCP
// transport and the Raft server with fsm, and publishes the transport's
// address in gossip. A node that restarts with its DataDir reopens its log and
// snapshots and rejoins with its state intact; a new node bootstraps as
// configured or waits for the leader to add it. While this node leads, it
// keeps the Raft configuration in line with gossip (see RaftConfig.MaxVoters
// and DeadGrace).
//
// gossip may be nil only for a node that runs alone (Bootstrap, or an
// existing single-server state): without it the configuration never changes.
func StartRaft(cfg RaftConfig, fsm raft.FSM, gossip *Gossip) (_ *Raft, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	switch {
	case fsm == nil:
		return nil, errors.New("cluster: start raft: no FSM")
	case gossip == nil && cfg.BootstrapExpect > 0:
		return nil, errors.New("cluster: start raft: BootstrapExpect needs gossip")
	case gossip != nil && gossip.ID() != cfg.NodeID:
		return nil, fmt.Errorf("cluster: start raft: node id %q differs from gossip's %q", cfg.NodeID, gossip.ID())
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	dialCtx, cancelDials := context.WithCancel(context.Background())
	r := &Raft{
		cfg:         cfg,
		log:         logger.With("component", "raft", "node", cfg.NodeID),
		gossip:      gossip,
		stop:        make(chan struct{}),
		cancelDials: cancelDials,
	}
	hl := newRaftLogger(r.log)
	defer func() { // on failure, close what was opened
		switch {
		case err == nil:
		case r.raft != nil:
			r.Shutdown() // closes the transport and the log too
		default:
			cancelDials()
			if r.trans != nil {
				r.trans.Close()
			}
			if r.store != nil {
				r.store.Close()
			}
		}
	}()

	dir := filepath.Join(cfg.DataDir, "raft")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cluster: start raft: %w", err)
	}
	dbPath := filepath.Join(dir, "raft.db")
	store, err := raftboltdb.New(raftboltdb.Options{
		Path:        dbPath,
		BoltOptions: &bbolt.Options{Timeout: time.Second}, // fail, not hang, when another process holds the file
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: open raft log %s (is another node using this data dir?): %w", dbPath, err)
	}
	r.store = store
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, raftSnapshotsRetained, hl.Named("snapshot"))
	if err != nil {
		return nil, fmt.Errorf("cluster: open raft snapshots in %s: %w", dir, err)
	}
	var advertise net.Addr
	if cfg.AdvertiseAddr != "" {
		if advertise, err = net.ResolveTCPAddr("tcp", cfg.AdvertiseAddr); err != nil {
			return nil, fmt.Errorf("cluster: raft advertise address: %w", err)
		}
	}
	stream, err := newRaftStream(dialCtx, cfg.BindAddr, advertise)
	if err != nil {
		return nil, fmt.Errorf("cluster: start raft transport on %s: %w", cfg.BindAddr, err)
	}
	r.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  stream,
		MaxPool: 3,                // connections kept per peer, as Consul does
		Timeout: 10 * time.Second, // I/O deadline of one RPC; raft backs off a silent peer on its own
		Logger:  hl.Named("transport"),
	})
	hasState, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		return nil, fmt.Errorf("cluster: read raft state: %w", err)
	}
	rc := cfg.raftConfig()
	rc.Logger = hl
	ra, err := raft.NewRaft(rc, fsm, store, store, snaps, r.trans)
	if err != nil {
		return nil, fmt.Errorf("cluster: start raft: %w", err)
	}
	r.raft = ra
	r.failedHB = make(chan raft.Observation, 64)
	r.observer = raft.NewObserver(r.failedHB, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.FailedHeartbeatObservation)
		return ok
	})
	ra.RegisterObserver(r.observer)
	r.log.Info("raft started", "addr", r.Addr(), "data_dir", dir, "existing_state", hasState,
		"last_index", ra.LastIndex(), "bootstrap", cfg.Bootstrap, "bootstrap_expect", cfg.BootstrapExpect)

	if cfg.Bootstrap && !hasState {
		err := ra.BootstrapCluster(raft.Configuration{Servers: []raft.Server{
			{Suffrage: raft.Voter, ID: raft.ServerID(cfg.NodeID), Address: r.trans.LocalAddr()},
		}}).Error()
		switch {
		case errors.Is(err, raft.ErrCantBootstrap):
		case err != nil:
			return nil, fmt.Errorf("cluster: bootstrap raft: %w", err)
		default:
			r.log.Info("bootstrapped a single-server raft cluster")
		}
	}
	if gossip != nil {
		addr := r.Addr()
		err := gossip.UpdateMeta(func(m *NodeMeta) {
			m.RaftAddr = addr
			m.HasRaftState = m.HasRaftState || hasState || cfg.Bootstrap
		}, 0)
		if err != nil {
			return nil, fmt.Errorf("cluster: gossip the raft address: %w", err)
		}
	}

	r.wg.Add(1)
	go r.watchLeadership()
	if gossip != nil && !hasState && !cfg.Bootstrap {
		r.wg.Add(1)
		go r.watchFormation()
	}
	return r, nil
}

// Addr is the Raft transport's address, host:port.
func (r *Raft) Addr() string { return string(r.trans.LocalAddr()) }

// Apply replicates cmd through the Raft log and returns the FSM's response to
// it once it is applied on this node. It fails with ErrNotLeader (nothing
// applied) unless this node leads. If the FSM's Apply returned an error, that
// error is returned. An error wrapping raft.ErrLeadershipLost means the
// outcome is unknown: the command may still be applied by the next leader.
// With BatchApplyCh, Apply may wait longer than timeout.
func (r *Raft) Apply(cmd []byte, timeout time.Duration) (any, error) {
	if r.raft.State() != raft.Leader {
		return nil, r.errNotLeader()
	}
	f := r.raft.Apply(cmd, timeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipTransferInProgress) {
			return nil, r.errNotLeader()
		}
		return nil, fmt.Errorf("cluster: raft apply: %w", err)
	}
	resp := f.Response()
	if err, ok := resp.(error); ok {
		return nil, err
	}
	return resp, nil
}

// Barrier waits until every command committed before it is applied to this
// node's FSM; a new leader calls it before it reads the FSM to make
// decisions. It fails with ErrNotLeader unless this node leads.
func (r *Raft) Barrier(timeout time.Duration) error {
	if err := r.raft.Barrier(timeout).Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipTransferInProgress) {
			return r.errNotLeader()
		}
		return fmt.Errorf("cluster: raft barrier: %w", err)
	}
	return nil
}

func (r *Raft) errNotLeader() error {
	id, addr := r.Leader()
	if id == "" {
		return fmt.Errorf("%w (no leader known)", ErrNotLeader)
	}
	return fmt.Errorf("%w (the leader is %s at %s)", ErrNotLeader, id, addr)
}

// IsLeader reports whether this node is the Raft leader now.
func (r *Raft) IsLeader() bool { return r.raft.State() == raft.Leader }

// Leader is the current leader as this node knows it; empty when unknown.
func (r *Raft) Leader() (id, addr string) {
	a, i := r.raft.LeaderWithID()
	return string(i), string(a)
}

// Term is the current Raft term.
func (r *Raft) Term() uint64 { return r.raft.CurrentTerm() }

// Servers is the latest Raft configuration (possibly not committed yet),
// sorted by id.
func (r *Raft) Servers() ([]RaftServer, error) {
	f := r.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("cluster: raft configuration: %w", err)
	}
	var out []RaftServer
	for _, s := range f.Configuration().Servers {
		out = append(out, RaftServer{ID: string(s.ID), Addr: string(s.Address), Suffrage: s.Suffrage})
	}
	slices.SortFunc(out, func(a, b RaftServer) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// LeadershipChanges returns a new channel that first holds whether this node
// leads now, then true each time it becomes leader and false each time it
// stops. The channel holds one value: a slow reader finds only the newest
// (so two trues in a row mean leadership was lost and regained in between).
// Shutdown closes it.
func (r *Raft) LeadershipChanges() <-chan bool {
	ch := make(chan bool, 1)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		close(ch)
		return ch
	}
	ch <- r.leading
	r.leaderSubs = append(r.leaderSubs, ch)
	return ch
}

func (r *Raft) publishLeadership(leading bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.leading = leading
	for _, ch := range r.leaderSubs {
		select { // drop the value the reader has not taken yet
		case <-ch:
		default:
		}
		ch <- leading // cannot block: this is the only sender, under r.mu
	}
}

// FailedHeartbeats delivers the id of a peer each time a heartbeat from this
// node, while it leads, to that peer fails. Raft heartbeats every
// HeartbeatTimeout/10, so a peer whose process died is reported within tens
// of milliseconds; a peer that is only slow or cut off is reported too.
// Reports are dropped while the channel is full.
func (r *Raft) FailedHeartbeats() <-chan raft.Observation { return r.failedHB }

// Shutdown stops the Raft server without leaving the configuration (the
// others see a crash; the leader removes this node after DeadGrace unless it
// comes back), stops the node's goroutines, and closes the transport and the
// log. Safe to call more than once.
func (r *Raft) Shutdown() error {
	var err error
	r.shutdown.Do(func() {
		close(r.stop)
		r.cancelDials() // raft.Shutdown waits for its RPCs, one of which may be dialing a peer that is gone
		// raft's heartbeat fast path runs on the transport's connection
		// goroutines, which raft.Shutdown does not wait for: one could save the
		// term after the log store is closed, and raft panics on that. Without
		// the handler, heartbeats queue for raft's main loop, which is stopped.
		r.trans.SetHeartbeatHandler(nil)
		r.raft.DeregisterObserver(r.observer)
		if e := r.raft.Shutdown().Error(); e != nil {
			err = fmt.Errorf("cluster: raft shutdown: %w", e)
		}
		r.wg.Wait()
		r.trans.Close() // raft closed it already; closing again is harmless
		if e := r.store.Close(); e != nil && err == nil {
			err = fmt.Errorf("cluster: close raft log: %w", e)
		}
		r.mu.Lock()
		r.closed = true
		for _, ch := range r.leaderSubs {
			close(ch)
		}
		r.leaderSubs = nil
		r.mu.Unlock()
		r.log.Info("raft stopped")
	})
	return err
}

// watchLeadership follows raft's leadership signal: it tells the
// LeadershipChanges subscribers and runs the reconciler while this node leads.
func (r *Raft) watchLeadership() {
	defer r.wg.Done()
	var stopReconciler func()
	defer func() {
		if stopReconciler != nil {
			stopReconciler()
		}
	}()
	for {
		select {
		case <-r.stop:
			return
		case leading := <-r.raft.LeaderCh():
			if leading {
				r.log.Info("became raft leader", "term", r.Term())
			} else {
				r.log.Info("lost raft leadership", "term", r.Term())
			}
			r.publishLeadership(leading)
			switch {
			case leading && stopReconciler == nil && r.gossip != nil:
				stopReconciler = r.startReconciler()
			case !leading && stopReconciler != nil:
				stopReconciler()
				stopReconciler = nil
			}
		}
	}
}

// watchFormation runs on a node without Raft state until it has some: it
// bootstraps the cluster if BootstrapExpect says this node should, and then
// gossips HasRaftState, which keeps later nodes from forming a second cluster.
func (r *Raft) watchFormation() {
	defer r.wg.Done()
	events, cancel := r.gossip.Subscribe()
	defer cancel()
	tick := time.NewTicker(formationPoll)
	defer tick.Stop()
	var (
		view      string    // the candidate set last seen
		viewSince time.Time // since when it has not changed
		waitingOn string    // what the last "waiting" log said
	)
	waiting := func(msg string, args ...any) {
		if msg != waitingOn {
			waitingOn = msg
			r.log.Info(msg, args...)
		}
	}
	for {
		if r.raft.LastIndex() > 0 { // bootstrapped here, or contacted by a leader
			if err := r.gossip.UpdateMeta(func(m *NodeMeta) { m.HasRaftState = true }, 0); err != nil {
				r.log.Warn("could not gossip that this node holds raft state", "err", err)
			}
			r.log.Info("joined a raft cluster", "last_index", r.raft.LastIndex())
			return
		}
		if n := r.cfg.BootstrapExpect; n > 0 {
			var cands []Member
			formed := ""
			for _, m := range r.gossip.Members() { // sorted by id
				if m.State != MemberAlive || m.Meta.RaftAddr == "" {
					continue
				}
				if m.ID != r.cfg.NodeID && m.Meta.HasRaftState {
					formed = m.ID
				}
				cands = append(cands, m)
			}
			var sig strings.Builder
			for _, m := range cands {
				sig.WriteString(m.ID + "=" + m.Meta.RaftAddr + ";")
			}
			if sig.String() != view {
				view, viewSince = sig.String(), time.Now()
			}
			switch {
			case formed != "":
				waiting("a raft cluster exists; waiting for its leader to add this node", "member_with_state", formed)
			case len(cands) < n:
				waiting("waiting for nodes to bootstrap raft", "have", len(cands), "expect", n)
			case cands[0].ID != r.cfg.NodeID:
				waiting("waiting for the lowest node id to bootstrap raft", "bootstrapper", cands[0].ID, "expect", n)
			case time.Since(viewSince) < r.cfg.BootstrapSettle:
				waiting("expected nodes are here; waiting for gossip to settle", "expect", n, "settle", r.cfg.BootstrapSettle)
			default:
				r.bootstrapWith(cands[:n])
			}
		}
		select {
		case <-r.stop:
			return
		case _, ok := <-events:
			if !ok {
				return // gossip shut down
			}
		case <-tick.C:
		}
	}
}

// bootstrapWith bootstraps the cluster with members as its voters. Raft
// refuses (harmlessly) if this node holds state by now.
func (r *Raft) bootstrapWith(members []Member) {
	servers := make([]raft.Server, len(members))
	ids := make([]string, len(members))
	for i, m := range members {
		servers[i] = raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(m.ID), Address: raft.ServerAddress(m.Meta.RaftAddr)}
		ids[i] = m.ID
	}
	err := r.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error()
	switch {
	case errors.Is(err, raft.ErrCantBootstrap):
		r.log.Info("not bootstrapping raft: this node holds state already")
	case err != nil:
		r.log.Error("could not bootstrap raft", "voters", ids, "err", err)
	default:
		r.log.Info("bootstrapped the raft cluster", "voters", ids)
	}
}
