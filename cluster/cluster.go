package cluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
)

// Config configures a node's control plane: gossip, Raft, the assignment FSM
// and the assignor that runs while the node leads.
type Config struct {
	// NodeID names the node in the cluster: unique and stable across restarts
	// (gossip's node name and Raft's server id).
	NodeID string
	// Zone is the node's failure domain; replicas are spread across zones.
	Zone string
	// DataDir holds the node's Raft log and snapshots (DataDir/raft).
	DataDir string
	// GossipAddr is the host:port memberlist binds (UDP and TCP); port 0 picks
	// a free port (GossipAddr on the Cluster reports it).
	GossipAddr string
	// RaftAddr is the host:port the Raft transport binds; port 0 picks a free port.
	RaftAddr string
	// HTTPAddr is the node's HTTP address, gossiped for queries and status.
	HTTPAddr string
	// Join is the gossip seed list, "host:port" each; empty for the first node.
	Join []string
	// GossipProfile is ProfileLANFast or ProfileLAN.
	GossipProfile string
	// GossipKey, when set, encrypts gossip (16, 24 or 32 bytes).
	GossipKey []byte
	// Bootstrap makes this node a one-voter cluster on first start.
	Bootstrap bool
	// BootstrapExpect forms a new cluster once that many nodes have gossiped.
	BootstrapExpect int
	// BootstrapSettle is how long the expected nodes must be seen unchanged
	// before BootstrapExpect forms the cluster.
	BootstrapSettle time.Duration
	// MaxVoters is how many Raft servers vote (odd, 1 to 7).
	MaxVoters int
	// DeadGrace is how long a dead member stays in the Raft configuration and
	// the assignment's node list before the leader removes it. Its partitions
	// move at once: the grace only delays forgetting the node.
	DeadGrace time.Duration
	// DataPlaneGrace is how long a live node may report its data plane down
	// (NodeMeta.DataPlaneDown) before the leader records it down and its
	// partitions fail over, provided another live node reports its own data
	// plane up: when every node has lost NATS, nothing moves. It rides out a
	// reconnection to another server of the NATS cluster (~0.1 s) and the
	// spread of one outage's detection across the nodes (their pings are
	// not in step).
	DataPlaneGrace time.Duration
	// Assignor tunes Plan.
	Assignor AssignorConfig
	// Forward carries a command a follower sends to the leader (lag reports
	// and give-backs: Raft applies commands on the leader only) and returns
	// the leader's error; the leader hands it to Cluster.ApplyForwarded. Nil:
	// a follower's ReportLag and GiveBack fail with ErrNotLeader.
	Forward func(ctx context.Context, leaderID string, cmd []byte) error
	// Logger receives every log of the control plane (nil: slog.Default()).
	Logger *slog.Logger
}

// DefaultConfig returns a config for one node on loopback; set NodeID,
// DataDir, Join and one of Bootstrap or BootstrapExpect to form a cluster.
func DefaultConfig() Config {
	g, r := DefaultGossipConfig(), DefaultRaftConfig()
	return Config{
		NodeID:          g.NodeID,
		DataDir:         r.DataDir,
		GossipAddr:      net.JoinHostPort(g.BindAddr, strconv.Itoa(g.BindPort)),
		RaftAddr:        r.BindAddr,
		GossipProfile:   g.Profile,
		BootstrapSettle: r.BootstrapSettle,
		MaxVoters:       r.MaxVoters,
		DeadGrace:       r.DeadGrace,
		DataPlaneGrace:  time.Second,
		Assignor:        DefaultAssignorConfig(),
	}
}

// Validate checks the config's fields against each other, with the checks of
// the gossip, Raft and assignor configs it makes.
func (c *Config) Validate() error {
	if _, err := c.gossipConfig(); err != nil {
		return err
	}
	rc := c.raftConfig()
	if err := rc.Validate(); err != nil {
		return err
	}
	if err := c.Assignor.Validate(); err != nil {
		return err
	}
	if c.DataPlaneGrace <= 0 {
		return fmt.Errorf("cluster: config: data plane grace %v: must be positive", c.DataPlaneGrace)
	}
	return nil
}

func (c *Config) gossipConfig() (GossipConfig, error) {
	g := DefaultGossipConfig()
	host, port, err := net.SplitHostPort(c.GossipAddr)
	if err != nil {
		return g, fmt.Errorf("cluster: config: gossip address %q: %w", c.GossipAddr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return g, fmt.Errorf("cluster: config: gossip port %q: %w", port, err)
	}
	g.NodeID = c.NodeID
	g.BindAddr, g.BindPort = host, p
	g.Join = c.Join
	g.JoinRetryInterval = 200 * time.Millisecond // seeds of a cluster started together answer within a second
	g.Profile = c.GossipProfile
	g.SecretKey = c.GossipKey
	g.Meta = NodeMeta{NodeID: c.NodeID, HTTPAddr: c.HTTPAddr, Zone: c.Zone}
	g.Logger = c.Logger
	return g, g.Validate()
}

func (c *Config) raftConfig() RaftConfig {
	r := DefaultRaftConfig()
	r.NodeID = c.NodeID
	r.BindAddr = c.RaftAddr
	r.DataDir = c.DataDir
	r.Bootstrap = c.Bootstrap
	r.BootstrapExpect = c.BootstrapExpect
	r.BootstrapSettle = c.BootstrapSettle
	r.MaxVoters = c.MaxVoters
	r.DeadGrace = c.DeadGrace
	r.Logger = c.Logger
	return r
}

const (
	// commandTimeout bounds one Raft Apply or Barrier of the leader loop.
	commandTimeout = 5 * time.Second
	// assignEvery is how often the leader re-runs the assignor when nothing
	// happens: it retries a failed command and catches what a coalesced
	// notification hid.
	assignEvery = time.Second
	// unknownMemberGrace is how long an alive node of the assignment may be
	// unknown to gossip before the leader records it dead: a leader whose
	// gossip has just (re)started learns the members within a push-pull.
	unknownMemberGrace = 5 * time.Second
	// maxStaleReplans bounds the re-plans after an Assign found stale in one pass.
	maxStaleReplans = 3
)

// Cluster is this node's control plane: gossip membership, Raft, the
// assignment FSM, and the assignor loop that runs while this node leads.
// Its methods are safe for concurrent use.
//
// Actor types: RegisterType declares a type on this node; the leader applies
// the types declared on its own node. Every eddy node declares the same
// types at start, so whichever node leads has them all; a type declared on
// followers only is not registered until one of them leads.
type Cluster struct {
	cfg    Config
	log    *slog.Logger
	gossip *Gossip
	raft   *Raft
	fsm    *FSM

	typesMu sync.Mutex
	types   map[string]ActorType // declared on this node
	kick    chan struct{}        // capacity 1: "the declared types changed"

	stop     chan struct{}
	wg       sync.WaitGroup
	shutdown sync.Once
	shutErr  error
}

// Start starts gossip, the FSM and Raft, and the loop that runs the assignor
// whenever this node leads. It registers no actor type (RegisterType does).
func Start(cfg Config) (*Cluster, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.Join = slices.Clone(cfg.Join)
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
		cfg.Logger = logger
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("cluster: start: %w", err)
	}
	gcfg, _ := cfg.gossipConfig()
	g, err := StartGossip(gcfg)
	if err != nil {
		return nil, err
	}
	fsm := NewFSM()
	r, err := StartRaft(cfg.raftConfig(), fsm, g)
	if err != nil {
		g.Shutdown()
		return nil, err
	}
	c := &Cluster{
		cfg:    cfg,
		log:    logger.With("component", "assignor", "node", cfg.NodeID),
		gossip: g,
		raft:   r,
		fsm:    fsm,
		types:  make(map[string]ActorType),
		kick:   make(chan struct{}, 1),
		stop:   make(chan struct{}),
	}
	c.wg.Add(1)
	go c.followLeadership()
	return c, nil
}

// ID is this node's id.
func (c *Cluster) ID() string { return c.cfg.NodeID }

// GossipAddr is the gossip address other nodes join through.
func (c *Cluster) GossipAddr() string { return c.gossip.Addr() }

// Incarnation identifies this run of the node (NodeMeta.Incarnation). The
// node runs a partition actor only while the assignment gives the partition
// to this incarnation: see Model.ActiveOnIncarnation.
func (c *Cluster) Incarnation() uint64 { return c.gossip.Incarnation() }

// RaftAddr is the Raft transport's address.
func (c *Cluster) RaftAddr() string { return c.raft.Addr() }

// RegisterType declares the actor type t on this node and waits until the
// assignment holds it (as declared), or ctx ends. It fails with
// ErrTypeConflict if the assignment holds the type with another partition
// count. See Cluster for which node's declarations the leader applies.
func (c *Cluster) RegisterType(ctx context.Context, t ActorType) error {
	if err := (RegisterType{Type: t}).validate(); err != nil {
		return err
	}
	c.typesMu.Lock()
	c.types[t.Name] = t
	c.typesMu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
	var conflict error
	_, err := c.fsm.Wait(ctx, func(m Model) bool {
		have, ok := m.ActorType(t.Name)
		if ok && have.Partitions != t.Partitions {
			conflict = fmt.Errorf("%w: %s has %d partitions, not %d", ErrTypeConflict, t.Name, have.Partitions, t.Partitions)
			return true
		}
		return ok && have == t
	})
	if conflict != nil {
		return conflict
	}
	if err != nil {
		return fmt.Errorf("cluster: register actor type %s: %w", t.Name, err)
	}
	return nil
}

// Assignment returns a copy of the current assignment as this node's FSM
// holds it.
func (c *Cluster) Assignment() Model { return c.fsm.Assignment() }

// Subscribe notifies of assignment changes; see FSM.Subscribe.
func (c *Cluster) Subscribe() (<-chan struct{}, func()) { return c.fsm.Subscribe() }

// Wait returns the assignment once cond holds for it, or ctx's error.
func (c *Cluster) Wait(ctx context.Context, cond func(Model) bool) (Model, error) {
	return c.fsm.Wait(ctx, cond)
}

// Leader is the Raft leader as this node knows it; empty when unknown.
func (c *Cluster) Leader() (id, addr string) { return c.raft.Leader() }

// Term is the current Raft term as this node knows it.
func (c *Cluster) Term() uint64 { return c.raft.Term() }

// ReportLag records the lags of this node's hot replicas: applied here when
// this node leads, else sent to the leader through Config.Forward.
func (c *Cluster) ReportLag(ctx context.Context, lags []LagReport) error {
	if err := c.applyOrForward(ctx, ReportLag{Node: c.cfg.NodeID, At: time.Now(), Lags: lags}); err != nil {
		return fmt.Errorf("cluster: report lag: %w", err)
	}
	return nil
}

// GiveBack gives back a partition this node is active for and cannot run at
// its epoch (see the GiveBack command): applied here when this node leads,
// else sent to the leader through Config.Forward. g.Node is this node (an
// empty one is set to it; another node's id is ErrInvalidCommand). Once it
// is applied the leader plans at once, as on every change of the
// assignment, and places the partition again at a new epoch, above
// g.MinEpoch, on another node when one is alive; with g.Avoid it keeps the
// partition's active off this node until the node restarts. A give-back
// that no longer matches the assignment (another active or epoch) fails
// with ErrStale when this node leads (a forwarded one with the leader's
// error text) and changes nothing.
func (c *Cluster) GiveBack(ctx context.Context, g GiveBack) error {
	if g.Node == "" {
		g.Node = c.cfg.NodeID
	}
	if g.Node != c.cfg.NodeID {
		return fmt.Errorf("%w: %s cannot give back a partition for %s", ErrInvalidCommand, c.cfg.NodeID, g.Node)
	}
	if err := c.applyOrForward(ctx, g); err != nil {
		return fmt.Errorf("cluster: give back %s/%d at epoch %d: %w", g.Type, g.Partition, g.Epoch, err)
	}
	c.log.Info("partition given back", "give_back", g.String())
	return nil
}

// GiveBackReplica tells the assignor that this node cannot keep its hot
// replica of a partition (GiveBackReplica; g.Node empty or this node's id):
// the partition avoids this node until it restarts, and the assignor moves
// the replica elsewhere (and cancels a move here). A give-back of a replica
// this node does not hold fails with ErrStale when this node leads (a
// forwarded one with the leader's error text) and changes nothing.
func (c *Cluster) GiveBackReplica(ctx context.Context, g GiveBackReplica) error {
	if g.Node == "" {
		g.Node = c.cfg.NodeID
	}
	if g.Node != c.cfg.NodeID {
		return fmt.Errorf("%w: %s cannot give back a replica for %s", ErrInvalidCommand, c.cfg.NodeID, g.Node)
	}
	if err := c.applyOrForward(ctx, g); err != nil {
		return fmt.Errorf("cluster: give back the replica of %s/%d: %w", g.Type, g.Partition, err)
	}
	c.log.Info("replica given back", "give_back", g.String())
	return nil
}

// applyOrForward applies cmd when this node leads, else forwards it to the
// leader through Config.Forward (ErrNotLeader when no leader is known or no
// Forward is set).
func (c *Cluster) applyOrForward(ctx context.Context, cmd Command) error {
	if c.raft.IsLeader() {
		_, err := c.apply(cmd)
		return err
	}
	id, _ := c.raft.Leader()
	if id == "" || c.cfg.Forward == nil {
		return ErrNotLeader
	}
	b, err := EncodeCommand(cmd)
	if err != nil {
		return err
	}
	return c.cfg.Forward(ctx, id, b)
}

// ApplyForwarded applies a command a follower forwarded (Config.Forward).
// Only lag reports and give-backs, what a node says about its own
// partitions, are accepted: membership and assignment are the leader's own
// decisions. It fails with ErrNotLeader when this node does not lead.
func (c *Cluster) ApplyForwarded(b []byte) error {
	cmd, err := DecodeCommand(b)
	if err != nil {
		return err
	}
	switch cmd.(type) {
	case ReportLag, GiveBack, GiveBackReplica:
	default:
		return fmt.Errorf("cluster: forwarded %T refused: only lag reports and give-backs are forwarded", cmd)
	}
	_, err = c.apply(cmd)
	return err
}

// SetDataPlaneDown tells the cluster whether this node has lost its data
// plane (NATS): it gossips NodeMeta.DataPlaneDown, and the leader fails the
// node's partitions over once it has been down for Config.DataPlaneGrace
// while another node's is up. It does not wait for the others to hear it.
func (c *Cluster) SetDataPlaneDown(down bool) error {
	return c.gossip.UpdateMeta(func(m *NodeMeta) { m.DataPlaneDown = down }, 0)
}

// IsLeader reports whether this node leads (and runs the assignor) now.
func (c *Cluster) IsLeader() bool { return c.raft.IsLeader() }

// Members lists the gossip members this node knows, itself included.
func (c *Cluster) Members() []Member { return c.gossip.Members() }

// Shutdown stops the assignor loop, Raft and gossip without leaving: the
// others see a crash. Safe to call more than once.
func (c *Cluster) Shutdown() error {
	c.shutdown.Do(func() {
		close(c.stop)
		c.wg.Wait()
		c.shutErr = errors.Join(c.raft.Shutdown(), c.gossip.Shutdown())
	})
	return c.shutErr
}

// Leave leaves the cluster gracefully within timeout: it announces the
// leave, so that the leader moves this node's active partitions away, waits
// until the assignment shows none on this node (or the timeout, or no other
// node stays to take them: every other node is gone or leaving too, as
// when a whole cluster is stopped at once), leaves gossip and shuts down.
// The returned error says if the actives did not move in time while
// another node stayed; the node has shut down either way.
func (c *Cluster) Leave(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var errs []error
	if err := c.gossip.AnnounceLeave(timeout / 4); err != nil {
		c.log.Warn("leave announcement not confirmed; waiting for gossip to spread it", "err", err)
	}
	switch why, err := c.awaitActivesMoved(deadline); {
	case err != nil:
		errs = append(errs, fmt.Errorf("cluster: leave: %w", err))
	default:
		c.log.Info(why + "; leaving")
	}
	if err := c.gossip.Leave(max(time.Until(deadline), 500*time.Millisecond)); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, c.Shutdown())
	return errors.Join(errs...)
}

// leaveCheck is how often a leaving node looks at gossip for nodes that
// stay (the assignment's changes wake it at once).
const leaveCheck = 100 * time.Millisecond

// awaitActivesMoved waits until the assignment shows no active partition on
// this node, or no other node stays to take them, or deadline; it says
// which, or fails at the deadline.
func (c *Cluster) awaitActivesMoved(deadline time.Time) (string, error) {
	changes, unsubscribe := c.fsm.Subscribe()
	defer unsubscribe()
	timeout := time.NewTimer(time.Until(deadline))
	defer timeout.Stop()
	tick := time.NewTicker(leaveCheck)
	defer tick.Stop()
	for {
		m := c.fsm.Assignment()
		actives := len(m.ActiveOn(c.cfg.NodeID))
		if actives == 0 {
			return "no active partition left on this node", nil
		}
		if !c.othersStay(m) {
			return "no other node stays to take this node's partitions", nil
		}
		select {
		case <-changes:
		case <-tick.C:
		case <-timeout.C:
			return "", fmt.Errorf("%d actives still on this node: %w", actives, context.DeadlineExceeded)
		}
	}
}

// othersStay reports whether another node is alive in assignment m and
// alive, not leaving, in gossip: one that can take partitions.
func (c *Cluster) othersStay(m Model) bool {
	staying := make(map[string]bool)
	for _, mb := range c.gossip.Members() {
		staying[mb.ID] = mb.State == MemberAlive
	}
	return slices.ContainsFunc(m.Nodes, func(n NodeInfo) bool { return n.Alive() && n.ID != c.cfg.NodeID && staying[n.ID] })
}

// followLeadership runs the assignor loop while this node leads.
func (c *Cluster) followLeadership() {
	defer c.wg.Done()
	changes := c.raft.LeadershipChanges()
	var stopLoop func()
	defer func() {
		if stopLoop != nil {
			stopLoop()
		}
	}()
	for {
		select {
		case <-c.stop:
			return
		case leading, ok := <-changes:
			if !ok {
				return
			}
			if stopLoop != nil {
				stopLoop() // also on true after true: leadership was lost in between
				stopLoop = nil
			}
			if leading {
				done := make(chan struct{})
				var wg sync.WaitGroup
				wg.Add(1)
				go func() {
					defer wg.Done()
					c.leaderLoop(done)
				}()
				stopLoop = func() { close(done); wg.Wait() }
			}
		}
	}
}

// leaderLoop is the assignor: after a Barrier (so that it decides on every
// committed command), it runs a pass on every gossip event, assignment
// change (an applied GiveBack or lag report among them: the FSM notifies
// its subscribers of every command that changed the assignment), declared
// type and at least every assignEvery, until done.
func (c *Cluster) leaderLoop(done <-chan struct{}) {
	c.log.Info("assignor started: this node leads", "term", c.raft.Term())
	defer c.log.Info("assignor stopped")
	for {
		err := c.raft.Barrier(commandTimeout)
		if err == nil {
			break
		}
		if errors.Is(err, ErrNotLeader) {
			return
		}
		c.log.Warn("barrier failed; retrying", "err", err)
		select {
		case <-done:
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	events, cancelEvents := c.gossip.Subscribe()
	defer cancelEvents()
	fsmCh, cancelFSM := c.fsm.Subscribe()
	defer cancelFSM()
	tick := time.NewTicker(assignEvery)
	defer tick.Stop()
	lp := &leaderPass{c: c, unknownSince: make(map[string]time.Time), suspects: make(map[string]bool), refused: make(map[string]uint64),
		dataDownSince: make(map[string]time.Time)}
	for {
		lp.run()
		var wake <-chan time.Time
		if lp.wake > 0 {
			wake = time.After(lp.wake)
		}
		select {
		case <-wake:
		case <-done:
			return
		case _, ok := <-events:
			if !ok {
				events = nil
			}
		case o := <-c.raft.FailedHeartbeats():
			if hb, ok := o.Data.(raft.FailedHeartbeatObservation); ok {
				lp.suspects[string(hb.PeerID)] = true
			}
		case <-fsmCh:
		case <-c.kick:
		case <-tick.C:
		}
	}
}

// leaderPass holds what the assignor remembers between passes.
type leaderPass struct {
	c            *Cluster
	unknownSince map[string]time.Time // alive in the assignment, unknown to gossip, since
	suspects     map[string]bool      // nodes a Raft heartbeat to failed, to probe
	refused      map[string]uint64    // nodes found gone by probing: the incarnation found gone
	// dataDownSince: live members reporting their data plane down while
	// another's is up, since when (this leader's clock).
	dataDownSince map[string]time.Time
	wake          time.Duration // run again this soon (0: on the next event or tick)
}

// probeTimeout bounds the connection attempt that tells a crashed process
// (its Raft port refuses) from a slow or unreachable one.
const probeTimeout = 200 * time.Millisecond

// probeSuspects checks each node a Raft heartbeat failed to: if its Raft
// port refuses connections, the node's process is gone (its host answered
// for it), and the node is recorded down at once, without waiting for gossip
// to suspect and then declare it dead (~0.8 s on the fast profile). A node
// that accepts the connection, or does not answer at all (a paused process,
// a lost host, a cut network), is left to gossip.
func (lp *leaderPass) probeSuspects(m Model, byID map[string]Member) {
	for id := range lp.suspects {
		delete(lp.suspects, id)
		n, known := m.Node(id)
		mb, inGossip := byID[id]
		if !known || !n.Alive() || n.RaftAddr == "" || (inGossip && mb.State != MemberAlive) {
			continue // not alive in the assignment, or gossip has decided already
		}
		conn, err := net.DialTimeout("tcp", n.RaftAddr, probeTimeout)
		if err == nil {
			conn.Close()
			continue
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			continue
		}
		lp.refused[id] = n.Incarnation
		lp.apply(NodeDown{ID: id}, "node down", "member", id,
			"why", "raft heartbeats fail and its raft port refuses connections: its process is gone")
	}
}

// run makes one pass: declared types, membership, forgetting, then Plan.
// Every failure is logged and retried by a later pass.
func (lp *leaderPass) run() {
	c := lp.c
	if !c.raft.IsLeader() {
		return
	}
	lp.wake = 0
	m := c.fsm.Assignment()

	c.typesMu.Lock()
	var types []ActorType
	for _, t := range c.types {
		types = append(types, t)
	}
	c.typesMu.Unlock()
	slices.SortFunc(types, func(a, b ActorType) int { return strings.Compare(a.Name, b.Name) })
	for _, t := range types {
		if have, ok := m.ActorType(t.Name); ok && have == t {
			continue
		}
		lp.apply(RegisterType{Type: t}, "register actor type", "type", t.Name, "partitions", t.Partitions, "replication_factor", t.ReplicationFactor)
	}

	members := c.gossip.Members()
	byID := make(map[string]Member, len(members))
	for _, mb := range members {
		byID[mb.ID] = mb
	}
	if len(lp.suspects) > 0 {
		lp.probeSuspects(m, byID)
		m = c.fsm.Assignment()
	}
	now := time.Now()
	for _, mb := range members {
		n, known := m.Node(mb.ID)
		if inc, ok := lp.refused[mb.ID]; ok && (mb.State != MemberAlive || mb.Meta.Incarnation != inc) {
			delete(lp.refused, mb.ID) // gossip caught up, or the node restarted
		}
		switch mb.State {
		case MemberAlive:
			if _, gone := lp.refused[mb.ID]; gone {
				continue // gossip has not seen this process die yet
			}
			if mb.Meta.DataPlaneDown && known && !n.Alive() {
				continue // it comes back once its data plane is up
			}
			up := NodeUp{ID: mb.ID, Zone: mb.Meta.Zone, RaftAddr: mb.Meta.RaftAddr, HTTPAddr: mb.Meta.HTTPAddr, Incarnation: mb.Meta.Incarnation}
			if mb.Meta.RaftAddr == "" {
				continue // not running Raft yet: it could not follow the assignment
			}
			if known && n == (NodeInfo{ID: up.ID, Zone: up.Zone, RaftAddr: up.RaftAddr, HTTPAddr: up.HTTPAddr, State: NodeAlive, Incarnation: up.Incarnation}) {
				continue
			}
			if known && up.Incarnation < n.Incarnation {
				continue // gossip still shows a process that has since restarted
			}
			why := "joined"
			switch {
			case known && up.Incarnation != n.Incarnation:
				why = fmt.Sprintf("restarted (incarnation %d -> %d)", n.Incarnation, up.Incarnation)
				if !n.Alive() {
					why += ", back from " + n.State.String()
				}
			case known && !n.Alive():
				why = "back from " + n.State.String()
			case known:
				why = "metadata changed"
			}
			lp.apply(up, "node up", "member", mb.ID, "why", why, "zone", up.Zone, "raft_addr", up.RaftAddr, "incarnation", up.Incarnation)
		case MemberLeaving, MemberLeft:
			if known && n.State == NodeAlive {
				lp.apply(NodeLeave{ID: mb.ID}, "node leaves", "member", mb.ID, "why", "gossip: "+mb.State.String())
			}
		case MemberDead:
			if known && n.State == NodeAlive {
				lp.apply(NodeDown{ID: mb.ID}, "node down", "member", mb.ID, "why", "gossip: dead since "+mb.Since.Format(time.RFC3339Nano))
			}
		}
	}
	for id := range lp.unknownSince {
		if _, ok := m.Node(id); !ok {
			delete(lp.unknownSince, id) // forgotten
		}
	}
	for _, n := range m.Nodes {
		if _, ok := byID[n.ID]; ok {
			delete(lp.unknownSince, n.ID)
			continue
		}
		since, ok := lp.unknownSince[n.ID]
		if !ok {
			since = now
			lp.unknownSince[n.ID] = now
		}
		if n.Alive() && now.Sub(since) >= unknownMemberGrace {
			lp.apply(NodeDown{ID: n.ID}, "node down", "member", n.ID, "why", "unknown to gossip for "+now.Sub(since).Round(time.Millisecond).String())
		}
	}

	m = c.fsm.Assignment()
	lp.dataPlaneDown(m, byID, now)
	m = c.fsm.Assignment()
	lp.forget(m, byID, now)
	lp.assign()
}

// dataPlaneDown records down each live node that has reported its data
// plane down for Config.DataPlaneGrace while another live node reported its
// own up: the node's partitions then fail over to nodes that can commit,
// as if it had crashed (the new owners' epochs fence it should it reach
// NATS again with a commit in hand). It stays in gossip and Raft, and comes
// back as a node once its data plane is up. While no live node reports its
// data plane up, NATS itself is away: nothing moves, every partition
// retries where it is, and the grace starts over once one node is back
// (the others reconnect within it).
func (lp *leaderPass) dataPlaneDown(m Model, byID map[string]Member, now time.Time) {
	var up string // a live node whose data plane is up
	down := map[string]bool{}
	for _, mb := range byID {
		n, ok := m.Node(mb.ID)
		if !ok || !n.Alive() || mb.State != MemberAlive {
			continue
		}
		if mb.Meta.DataPlaneDown {
			down[mb.ID] = true
		} else if up == "" {
			up = mb.ID
		}
	}
	for id := range lp.dataDownSince {
		if !down[id] || up == "" {
			delete(lp.dataDownSince, id)
		}
	}
	if up == "" {
		return
	}
	for id := range down {
		since, ok := lp.dataDownSince[id]
		if !ok {
			since = now
			lp.dataDownSince[id] = now
			lp.c.log.Warn("a node reports its data plane (NATS) down while another's is up", "member", id, "up", up, "grace", lp.c.cfg.DataPlaneGrace)
		}
		if wait := since.Add(lp.c.cfg.DataPlaneGrace).Sub(now); wait > 0 {
			lp.wake = min(cmp.Or(lp.wake, wait), wait)
			continue
		}
		lp.apply(NodeDown{ID: id}, "node down", "member", id,
			"why", fmt.Sprintf("its data plane (NATS) is down, for %v while %s's is up", now.Sub(since).Round(time.Millisecond), up))
	}
}

// forget drops gone nodes that hold nothing once they are past DeadGrace.
func (lp *leaderPass) forget(m Model, byID map[string]Member, now time.Time) {
	for _, n := range m.Nodes {
		if n.Alive() {
			continue
		}
		since, ok := lp.unknownSince[n.ID]
		if mb, known := byID[n.ID]; known {
			if mb.State == MemberAlive || mb.State == MemberLeaving {
				continue
			}
			since, ok = mb.Since, true
		}
		if !ok || now.Sub(since) < lp.c.cfg.DeadGrace || holdsAnything(m, n.ID) {
			continue
		}
		lp.apply(ForgetNode{ID: n.ID}, "forget node", "member", n.ID, "why", fmt.Sprintf("%s for %s, past the grace of %s", n.State, now.Sub(since).Round(time.Millisecond), lp.c.cfg.DeadGrace))
	}
}

func holdsAnything(m Model, node string) bool {
	for _, p := range m.Partitions() {
		if p.Active == node || p.HasReplica(node) {
			return true
		}
	}
	return false
}

// assign plans and applies the changes as one Assign, planning again when
// the Assign was stale.
func (lp *leaderPass) assign() {
	c := lp.c
	for range maxStaleReplans {
		m := c.fsm.Assignment()
		changes := Plan(m, c.cfg.Assignor)
		if len(changes) == 0 {
			return
		}
		_, err := lp.c.apply(Assign{Changes: changes})
		if errors.Is(err, ErrStale) {
			c.log.Info("assignment changed under the plan; planning again", "err", err)
			continue
		}
		if err != nil {
			c.log.Warn("could not apply the assignor's plan", "changes", len(changes), "err", err)
			return
		}
		for _, ch := range changes {
			c.log.Info("assignment changed", "change", ch.String()) // ends with the reason
		}
		return
	}
}

// apply applies cmd through Raft and logs it as what; a failure is logged,
// not returned: the next pass retries.
func (lp *leaderPass) apply(cmd Command, what string, args ...any) {
	if _, err := lp.c.apply(cmd); err != nil {
		lp.c.log.Warn("could not apply "+what, append(args, "err", err)...)
		return
	}
	lp.c.log.Info(what, args...)
}

// apply encodes cmd and applies it through Raft; only the leader can.
func (c *Cluster) apply(cmd Command) (any, error) {
	b, err := EncodeCommand(cmd)
	if err != nil {
		return nil, err
	}
	return c.raft.Apply(b, commandTimeout)
}
