package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/vmihailenco/msgpack/v5"
)

// Gossip profiles: how fast memberlist probes and how soon it declares a
// silent node dead.
const (
	// ProfileLANFast probes every 200 ms with a 100 ms probe timeout and a
	// suspicion multiplier of 2: a crashed node is declared dead in 0.75-0.95 s
	// on loopback (measured on a 2-core machine). It also exchanges
	// full state with a random member every 5 s instead of 30.
	ProfileLANFast = "lan-fast"
	// ProfileLAN is memberlist's DefaultLANConfig: gentler on busy or lossy
	// networks, but a crashed node is declared dead only after ~6.8 s.
	ProfileLAN = "lan"
)

// deadNodeReclaim lets a node that restarts under its old NodeID on a new
// address (a rescheduled container) take its name back as soon as its old
// self is dead; memberlist's default (never) would lock it out. A live node's
// address is never taken over.
const deadNodeReclaim = time.Millisecond

// memberTombstone is how long a dead or left member stays listed by Members
// (Serf keeps failed members for a day too), so that operators can see what
// went away. Nothing in the cluster depends on it: Raft counts a member that
// gossip has forgotten as dead.
const memberTombstone = 24 * time.Hour

// NodeMeta is what a node tells the other nodes about itself. It travels
// msgpack-encoded in memberlist's node metadata, which holds at most
// memberlist.MetaMaxSize (512) bytes; Validate checks the fit.
type NodeMeta struct {
	// NodeID repeats the node's id (memberlist's node name).
	NodeID string `msgpack:"id"`
	// RaftAddr is the host:port of the node's Raft transport, empty until the
	// node runs Raft (StartRaft fills it in).
	RaftAddr string `msgpack:"raft,omitempty"`
	// HTTPAddr is the host:port of the node's HTTP endpoint.
	HTTPAddr string `msgpack:"http,omitempty"`
	// Zone is the failure domain (rack, availability zone) the assignor spreads
	// replicas across; empty means "no zones".
	Zone string `msgpack:"zone,omitempty"`
	// HasRaftState is set by StartRaft once the node holds Raft state (it
	// bootstrapped, was added by a leader, or restarted with a log). A node with
	// BootstrapExpect never forms a new cluster next to such a node.
	HasRaftState bool `msgpack:"rs,omitempty"`
	// Leaving is set by AnnounceLeave or Leave before the node leaves, so that
	// the others tell a graceful leave from a crash (memberlist reports both
	// alike) and can move work away first.
	Leaving bool `msgpack:"lv,omitempty"`
	// DataPlaneDown is set while the node has lost its connection to the data
	// plane (NATS) and not got it back (Cluster.SetDataPlaneDown). Its
	// partitions cannot commit there; the assignor moves them to nodes that
	// can, when some can (see Config.DataPlaneGrace).
	DataPlaneDown bool `msgpack:"dd,omitempty"`
	// Incarnation identifies this run of the node's process: StartGossip sets
	// it (unless the config sets one) to the start time in Unix nanoseconds, so
	// that a restarted node, same id and data dir, announces a greater one. The
	// assignor gives the partitions of a restarted node new epochs for it
	// (PartitionAssignment.ActiveIncarnation).
	Incarnation uint64 `msgpack:"inc,omitempty"`
}

// GossipConfig configures a node's gossip membership.
type GossipConfig struct {
	// NodeID names the node in the cluster: unique, and stable across restarts,
	// since Raft knows a server by it.
	NodeID string
	// BindAddr is the address memberlist listens on (UDP and TCP).
	BindAddr string
	// BindPort is the port memberlist listens on; 0 picks a free port
	// (Addr reports it).
	BindPort int
	// AdvertiseAddr is the address other nodes reach this one at; empty means
	// BindAddr (or, for 0.0.0.0, the host's first private address).
	AdvertiseAddr string
	// AdvertisePort is the port other nodes reach this one at; 0 means BindPort.
	AdvertisePort int
	// Join is the seed list, "host:port" each: any live member will do. An empty
	// list makes this node the first of a new cluster.
	Join []string
	// JoinRetryInterval is the pause between two rounds over the seed list.
	JoinRetryInterval time.Duration
	// JoinRetryAttempts bounds the rounds over the seed list; 0 retries until a
	// seed answers or the node shuts down.
	JoinRetryAttempts int
	// Meta is the metadata gossiped to the other nodes. Meta.NodeID may be left
	// empty: it is set to NodeID. Meta.Incarnation is normally left 0: it is
	// set to a new incarnation (see NodeMeta.Incarnation).
	Meta NodeMeta
	// SecretKey, when set, encrypts and authenticates all gossip with AES-GCM
	// (16, 24 or 32 bytes for AES-128/192/256). Every node needs the same key;
	// a node with another key cannot join.
	SecretKey []byte
	// Profile chooses the failure-detector timing: ProfileLANFast or ProfileLAN.
	Profile string
	// Logger receives the gossip logs, memberlist's included (nil: slog.Default()).
	Logger *slog.Logger
}

// DefaultGossipConfig returns a config that runs a single node on loopback;
// set NodeID, the addresses and Join to form a cluster.
func DefaultGossipConfig() GossipConfig {
	host, _ := os.Hostname()
	return GossipConfig{
		NodeID:            host,           // one node a host unless told otherwise, as memberlist does
		BindAddr:          "127.0.0.1",    // safe and working on one machine; use the host's address to span machines
		BindPort:          7946,           // memberlist's (and Serf's) well-known port
		JoinRetryInterval: time.Second,    // seeds that are still starting answer within seconds; a round a second costs nothing
		JoinRetryAttempts: 0,              // forever: a node outside the cluster is useless, and seeds start in any order
		Profile:           ProfileLANFast, // ~1 s crash detection, measured on loopback
		Meta:              NodeMeta{NodeID: host},
	}
}

// Validate checks the config's fields against each other.
func (c *GossipConfig) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("cluster: gossip config: %s", fmt.Sprintf(format, a...))
	}
	switch {
	case c.NodeID == "":
		return bad("no node id")
	case c.Meta.NodeID != "" && c.Meta.NodeID != c.NodeID:
		return bad("meta node id %q differs from node id %q", c.Meta.NodeID, c.NodeID)
	case c.BindAddr == "":
		return bad("no bind address")
	case net.ParseIP(c.BindAddr) == nil:
		return bad("bind address %q is not an IP address", c.BindAddr)
	case c.BindPort < 0 || c.BindPort > 65535:
		return bad("bind port %d", c.BindPort)
	case c.AdvertiseAddr != "" && net.ParseIP(c.AdvertiseAddr) == nil:
		return bad("advertise address %q is not an IP address", c.AdvertiseAddr)
	case c.AdvertisePort < 0 || c.AdvertisePort > 65535:
		return bad("advertise port %d", c.AdvertisePort)
	case len(c.Join) > 0 && c.JoinRetryInterval <= 0:
		return bad("join retry interval %s must be positive", c.JoinRetryInterval)
	case c.JoinRetryAttempts < 0:
		return bad("join retry attempts %d", c.JoinRetryAttempts)
	case c.Profile != ProfileLANFast && c.Profile != ProfileLAN:
		return bad("profile %q: use %q or %q", c.Profile, ProfileLANFast, ProfileLAN)
	}
	switch len(c.SecretKey) {
	case 0, 16, 24, 32:
	default:
		return bad("secret key of %d bytes: use 16, 24 or 32", len(c.SecretKey))
	}
	for _, s := range c.Join {
		if _, _, err := net.SplitHostPort(s); err != nil {
			return bad("seed %q: %v", s, err)
		}
	}
	meta := c.Meta
	meta.NodeID = c.NodeID
	if _, err := encodeMeta(meta); err != nil {
		return bad("%v", err)
	}
	return nil
}

// MemberState is what gossip knows of a member's liveness.
//
// memberlist does not report suspicion to its delegates, so a suspected
// member shows as alive until it is declared dead.
type MemberState int

const (
	// MemberAlive answers probes.
	MemberAlive MemberState = iota
	// MemberLeaving has announced a graceful leave (Leave) and still answers.
	MemberLeaving
	// MemberDead stopped answering probes (crash, partition, SIGSTOP).
	MemberDead
	// MemberLeft left gracefully (Leave).
	MemberLeft
)

func (s MemberState) String() string {
	switch s {
	case MemberAlive:
		return "alive"
	case MemberLeaving:
		return "leaving"
	case MemberDead:
		return "dead"
	case MemberLeft:
		return "left"
	}
	return "MemberState(" + strconv.Itoa(int(s)) + ")"
}

// Member is one node as this node's gossip sees it.
type Member struct {
	// ID is the node id.
	ID string
	// Addr is the member's gossip address, host:port.
	Addr string
	// Meta is the member's metadata (zero if it could not be decoded).
	Meta NodeMeta
	// State is the member's liveness.
	State MemberState
	// Since is when this node saw State begin (its own clock).
	Since time.Time
}

// MemberEventType says what happened to a member.
type MemberEventType int

const (
	// MemberJoin: the member is alive (new, or back from dead or left).
	MemberJoin MemberEventType = iota
	// MemberLeave: the member is gone; Member.State tells dead from left.
	MemberLeave
	// MemberUpdate: a live member changed its metadata (MemberLeaving
	// included: it announced a graceful leave).
	MemberUpdate
)

func (t MemberEventType) String() string {
	switch t {
	case MemberJoin:
		return "join"
	case MemberLeave:
		return "leave"
	case MemberUpdate:
		return "update"
	}
	return "MemberEventType(" + strconv.Itoa(int(t)) + ")"
}

// MemberEvent is a change of one member.
type MemberEvent struct {
	Type   MemberEventType
	Member Member
}

// ErrGossipShutdown is returned by calls made after Shutdown.
var ErrGossipShutdown = errors.New("cluster: gossip is shut down")

// Gossip is this node's membership in the cluster: it knows every member, its
// metadata and its liveness, and reports changes. Its methods are safe for
// concurrent use.
type Gossip struct {
	cfg  GossipConfig
	log  *slog.Logger
	ml   *memberlist.Memberlist
	addr string // advertised host:port

	// meta is the encoded local metadata memberlist gossips; metaMu orders writers.
	meta        atomic.Pointer[[]byte]
	metaVersion atomic.Uint64 // counts metadata changes
	metaMu      sync.Mutex

	mu       sync.Mutex // guards members and subs; taken inside memberlist's callbacks
	members  map[string]*Member
	subs     map[*memberSub]struct{}
	closed   bool
	events   <-chan MemberEvent
	leaveMu  sync.Mutex
	left     atomic.Bool
	joined   chan struct{}
	stop     chan struct{}
	wg       sync.WaitGroup
	shutdown sync.Once
}

// StartGossip starts memberlist on the configured address and, in the
// background, joins the cluster through the seed list, retrying until a seed
// answers (a node with no seeds is the first of its cluster; Joined reports
// when the join succeeded).
func StartGossip(cfg GossipConfig) (*Gossip, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.Meta.NodeID = cfg.NodeID
	if cfg.Meta.Incarnation == 0 {
		cfg.Meta.Incarnation = newIncarnation()
	}
	cfg.Join = slices.Clone(cfg.Join)
	cfg.SecretKey = slices.Clone(cfg.SecretKey)
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	g := &Gossip{
		cfg:     cfg,
		log:     logger.With("component", "gossip", "node", cfg.NodeID),
		members: make(map[string]*Member),
		subs:    make(map[*memberSub]struct{}),
		joined:  make(chan struct{}),
		stop:    make(chan struct{}),
	}
	enc, err := encodeMeta(cfg.Meta)
	if err != nil {
		return nil, err
	}
	g.meta.Store(&enc)
	g.events, _ = g.Subscribe()

	var mc *memberlist.Config
	switch cfg.Profile {
	case ProfileLAN:
		mc = memberlist.DefaultLANConfig()
	default:
		mc = memberlist.DefaultLANConfig()
		mc.ProbeInterval = 200 * time.Millisecond // probe a random member 5 times a second
		mc.ProbeTimeout = 100 * time.Millisecond  // loopback and LAN round trips are well under 1 ms
		mc.SuspicionMult = 2                      // suspect for 2 * log10(N+1) probe intervals (min 400 ms) before declaring dead
		mc.PushPullInterval = 5 * time.Second     // a full state exchange repairs a lost broadcast (hashicorp/memberlist#263) within 5 s, not 30
	}
	mc.Name = cfg.NodeID
	mc.BindAddr = cfg.BindAddr
	mc.BindPort = cfg.BindPort
	mc.AdvertiseAddr = cfg.AdvertiseAddr
	mc.AdvertisePort = cfg.AdvertisePort
	if mc.AdvertisePort == 0 {
		mc.AdvertisePort = cfg.BindPort
	}
	mc.SecretKey = cfg.SecretKey
	mc.DeadNodeReclaimTime = deadNodeReclaim
	mc.Delegate = gossipDelegate{g}
	mc.Events = gossipEvents{g}
	mc.Logger = newStdLogger(logger.With("component", "memberlist", "node", cfg.NodeID))
	ml, err := memberlist.Create(mc)
	if err != nil {
		g.closeSubs()
		g.wg.Wait()
		return nil, fmt.Errorf("cluster: start gossip on %s:%d: %w", cfg.BindAddr, cfg.BindPort, err)
	}
	g.ml = ml
	// Read the local node now, before any other node can make memberlist
	// rewrite it (LocalNode hands out memberlist's own, lock-guarded struct).
	local := ml.LocalNode()
	g.addr = net.JoinHostPort(local.Addr.String(), strconv.Itoa(int(local.Port)))
	g.log.Info("gossip started", "addr", g.Addr(), "profile", cfg.Profile, "encrypted", len(cfg.SecretKey) > 0)

	seeds := g.seeds()
	if len(seeds) == 0 {
		close(g.joined)
	} else {
		g.wg.Add(1)
		go g.joinLoop(seeds)
	}
	g.wg.Go(g.reconnectLoop)
	return g, nil
}

// Reconnecting to members declared dead.
const (
	// reconnectEvery is how often a node tries the members it holds dead.
	reconnectEvery = 2 * time.Second
	// reconnectDial bounds the TCP connection attempt that tells whether a
	// member declared dead answers again, before memberlist's join (whose
	// own connection timeout, 10 s, would hold up Shutdown) is asked to
	// exchange state with it.
	reconnectDial = 500 * time.Millisecond
)

// reconnectLoop heals a network partition. Memberlist stops gossiping to a
// member it declared dead after GossipToTheDeadTime (30 s) and never
// exchanges state with it, so after a longer partition both sides would
// hold each other dead for good. Every reconnectEvery this node tries the
// members it holds dead (not those that left); one that answers gets a
// state exchange, which makes whichever side was declared dead refute it.
// A crashed member costs a refused connection every 2 s until it is
// forgotten. It starts once the node has joined and stops with Shutdown,
// or after Leave.
func (g *Gossip) reconnectLoop() {
	select {
	case <-g.joined:
	case <-g.stop:
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-g.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	tick := time.NewTicker(reconnectEvery)
	defer tick.Stop()
	d := net.Dialer{Timeout: reconnectDial}
	for {
		select {
		case <-g.stop:
			return
		case <-tick.C:
		}
		if g.left.Load() {
			return
		}
		var dead []Member
		g.mu.Lock()
		for _, m := range g.members {
			if m.State == MemberDead && m.ID != g.cfg.NodeID {
				dead = append(dead, *m)
			}
		}
		g.mu.Unlock()
		for _, m := range dead {
			conn, err := d.DialContext(ctx, "tcp", m.Addr)
			if err != nil {
				continue
			}
			conn.Close()
			if n, err := g.ml.Join([]string{m.Addr}); n > 0 {
				g.log.Info("a member declared dead answers again: state exchanged", "member", m.ID, "addr", m.Addr)
			} else {
				g.log.Debug("a member declared dead accepts connections but no state exchange", "member", m.ID, "err", err)
			}
		}
	}
}

// seeds is the seed list without this node's own address.
func (g *Gossip) seeds() []string {
	self := g.Addr()
	var out []string
	for _, s := range g.cfg.Join {
		if s != self {
			out = append(out, s)
		}
	}
	return out
}

// joinLoop contacts the seeds until one answers, the attempts run out, or
// the node shuts down.
func (g *Gossip) joinLoop(seeds []string) {
	defer g.wg.Done()
	t := time.NewTimer(0)
	defer t.Stop()
	for attempt := 1; ; attempt++ {
		select {
		case <-t.C:
		case <-g.stop:
			return
		}
		version := g.metaVersion.Load()
		n, err := g.ml.Join(seeds)
		if n > 0 {
			g.log.Info("joined the cluster", "seeds_answered", n, "attempt", attempt, "members", g.ml.NumMembers())
			close(g.joined)
			if g.metaVersion.Load() != version {
				// The metadata changed while the join's state exchange was
				// under way, which may have carried the old one.
				_ = g.spreadMeta(0)
			}
			return
		}
		if g.cfg.JoinRetryAttempts > 0 && attempt >= g.cfg.JoinRetryAttempts {
			g.log.Error("could not join the cluster: no seed answered", "seeds", seeds, "attempts", attempt, "err", err)
			return
		}
		level := slog.LevelDebug
		if attempt == 1 || attempt%10 == 0 {
			level = slog.LevelWarn
		}
		g.log.Log(context.Background(), level, "no seed answered; retrying", "seeds", seeds, "attempt", attempt, "err", err)
		t.Reset(g.cfg.JoinRetryInterval)
	}
}

// ID is this node's id.
func (g *Gossip) ID() string { return g.cfg.NodeID }

// Addr is the gossip address other nodes reach this node at, host:port (a
// seed for the nodes that come next).
func (g *Gossip) Addr() string { return g.addr }

// Joined is closed once this node has joined the cluster through a seed, at
// once for a node without seeds. It stays open if the join attempts run out.
func (g *Gossip) Joined() <-chan struct{} { return g.joined }

// newIncarnation returns the incarnation of a process starting now: the time
// in Unix nanoseconds, which grows from one start to the next (barring a clock
// set back), at least 1.
func newIncarnation() uint64 {
	return max(uint64(time.Now().UnixNano()), 1)
}

// Incarnation is this node process's incarnation (NodeMeta.Incarnation).
func (g *Gossip) Incarnation() uint64 { return g.cfg.Meta.Incarnation }

// LocalMeta is the metadata this node gossips.
func (g *Gossip) LocalMeta() NodeMeta {
	m, _ := decodeMeta(*g.meta.Load())
	return m
}

// UpdateMeta changes this node's metadata with update, gossips it and pushes
// it to a few members directly, waiting up to timeout for them to take it
// (with a timeout of 0 it does not wait). The new metadata is in effect
// locally, and spreads on, even when the wait times out. NodeID and Leaving
// cannot change (Leave sets Leaving), and after Leave UpdateMeta fails:
// re-advertising would undo the leave.
func (g *Gossip) UpdateMeta(update func(*NodeMeta), timeout time.Duration) error {
	var bad error
	err := g.updateMeta(func(m *NodeMeta) {
		old := *m
		update(m)
		if m.NodeID != old.NodeID || m.Leaving != old.Leaving || m.Incarnation != old.Incarnation {
			bad = fmt.Errorf("cluster: update meta: NodeID, Leaving and Incarnation cannot change")
			*m = old
		}
	}, timeout)
	if bad != nil {
		return bad
	}
	return err
}

func (g *Gossip) updateMeta(update func(*NodeMeta), timeout time.Duration) error {
	changed, err := g.setMeta(update)
	if err != nil || !changed {
		return err
	}
	return g.spreadMeta(timeout)
}

// setMeta runs update on the local metadata and has memberlist broadcast
// it (without waiting: memberlist's broadcast queue can drop a message and
// then never report it sent, hashicorp/memberlist#263; spreadMeta makes
// sure instead).
func (g *Gossip) setMeta(update func(*NodeMeta)) (changed bool, err error) {
	g.metaMu.Lock()
	defer g.metaMu.Unlock()
	if g.isClosed() {
		return false, ErrGossipShutdown
	}
	if g.left.Load() {
		return false, errors.New("cluster: update meta: the node has left the cluster")
	}
	meta := g.LocalMeta()
	old := meta
	update(&meta)
	if meta == old {
		return false, nil
	}
	enc, err := encodeMeta(meta)
	if err != nil {
		return false, fmt.Errorf("cluster: update meta: %w", err)
	}
	g.meta.Store(&enc)
	g.metaVersion.Add(1)
	// UpdateNode calls back into gossipEvents (which takes g.mu): hold no lock
	// but metaMu here. Its only error is the wait's timeout.
	//
	// memberlist silently drops the update when a refutation raced it: a node
	// that restarts under the same name refutes the alive message of its
	// previous process (found in the join's state exchange) with a higher
	// incarnation than the one UpdateNode had taken, and goes on gossiping its
	// previous metadata. The update took if the local member shows it; else
	// try again, with a newer incarnation.
	for range metaUpdateAttempts {
		_ = g.ml.UpdateNode(time.Nanosecond)
		if g.localMetaIs(meta) {
			break
		}
	}
	return true, nil
}

// metaUpdateAttempts bounds setMeta's UpdateNode calls; each lost one means a
// refutation came in between, which takes a join's state exchange.
const metaUpdateAttempts = 10

// localMetaIs reports whether memberlist holds meta as this node's metadata
// (observed through its events).
func (g *Gossip) localMetaIs(meta NodeMeta) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	m, ok := g.members[g.cfg.NodeID]
	return ok && m.Meta == meta
}

// metaSyncPeers is how many members a metadata change is pushed to directly,
// by a TCP state exchange, besides memberlist's gossip broadcast (which can
// be lost); each of them gossips it on too.
const metaSyncPeers = 3

// spreadMeta pushes this node's state to up to metaSyncPeers random live
// members, waiting up to timeout (not at all if timeout <= 0).
func (g *Gossip) spreadMeta(timeout time.Duration) error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return ErrGossipShutdown
	}
	var peers []string
	for _, m := range g.members {
		if m.ID != g.cfg.NodeID && (m.State == MemberAlive || m.State == MemberLeaving) {
			peers = append(peers, m.Addr)
		}
	}
	if len(peers) == 0 {
		g.mu.Unlock()
		return nil // not joined yet: the join's state exchange carries the metadata
	}
	rand.Shuffle(len(peers), func(i, j int) { peers[i], peers[j] = peers[j], peers[i] })
	peers = peers[:min(len(peers), metaSyncPeers)]
	done := make(chan struct{})
	g.wg.Add(1)
	g.mu.Unlock()
	go func() {
		defer g.wg.Done()
		defer close(done)
		if n, err := g.ml.Join(peers); n == 0 {
			g.log.Debug("could not push metadata to any member", "peers", peers, "err", err)
		}
	}()
	if timeout <= 0 {
		return nil
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
		return fmt.Errorf("cluster: update meta: no member confirmed it within %s (it spreads on)", timeout)
	}
}

// Members lists every member this node knows, itself included, sorted by id:
// alive ones, and dead or left ones for a while after they went.
func (g *Gossip) Members() []Member {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	out := make([]Member, 0, len(g.members))
	for id, m := range g.members {
		if m.State != MemberAlive && now.Sub(m.Since) > memberTombstone {
			delete(g.members, id)
			continue
		}
		out = append(out, *m)
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Events delivers membership changes, beginning with a Join for this node.
// It is one subscription, created when the node started, meant for one
// reader; Subscribe makes more.
//
// Concurrency contract: memberlist never waits for the reader. Changes are
// queued per member, and while the reader is behind, the changes of one
// member coalesce into its newest state (a Join is never turned into an
// Update), so the queue holds at most one event per member. Events of one
// member arrive in order. The channel is closed by Shutdown.
func (g *Gossip) Events() <-chan MemberEvent { return g.events }

// Subscribe returns a new, independent stream of membership changes with the
// contract of Events. It begins with a Join (or, for a dead or left member, a
// Leave) for every member known at the time of the call, so a subscriber
// misses nothing. cancel ends the subscription and closes the channel;
// Shutdown closes it too.
func (g *Gossip) Subscribe() (events <-chan MemberEvent, cancel func()) {
	s := &memberSub{
		out:     make(chan MemberEvent),
		notify:  make(chan struct{}, 1),
		done:    make(chan struct{}),
		pending: make(map[string]MemberEvent),
	}
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		close(s.out)
		return s.out, func() {}
	}
	ids := make([]string, 0, len(g.members))
	for id := range g.members {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		m := *g.members[id]
		typ := MemberJoin
		if m.State == MemberDead || m.State == MemberLeft {
			typ = MemberLeave
		}
		s.push(MemberEvent{Type: typ, Member: m})
	}
	g.subs[s] = struct{}{}
	g.wg.Add(1)
	g.mu.Unlock()
	go s.pump(&g.wg)
	var once sync.Once
	return s.out, func() {
		once.Do(func() {
			g.mu.Lock()
			if _, ok := g.subs[s]; ok {
				delete(g.subs, s)
				close(s.done)
			}
			g.mu.Unlock()
		})
	}
}

// AnnounceLeave tells the cluster that this node is about to leave: the
// others see it as MemberLeaving (an Update event) while it keeps running,
// so that the assignor can move its partitions away before it goes. It
// waits up to timeout for a few members to take the news. Leave announces
// it too when this was not called.
func (g *Gossip) AnnounceLeave(timeout time.Duration) error {
	g.log.Info("announcing that this node leaves the cluster")
	return g.updateMeta(func(m *NodeMeta) { m.Leaving = true }, timeout)
}

// Leave leaves the cluster gracefully, waiting up to timeout in all: it
// announces the leave in this node's metadata (see AnnounceLeave), then
// tells memberlist to leave. The others see the node as left, not dead,
// even if memberlist's leave message is lost, since they know it was
// leaving. Call it on SIGTERM, before Shutdown; the node keeps answering
// gossip until Shutdown.
func (g *Gossip) Leave(timeout time.Duration) error {
	g.leaveMu.Lock()
	defer g.leaveMu.Unlock()
	if g.isClosed() {
		return ErrGossipShutdown
	}
	if g.left.Load() {
		return nil
	}
	g.log.Info("leaving the cluster")
	deadline := time.Now().Add(timeout)
	// The announcement must reach the others before memberlist's leave
	// message, which replaces any queued broadcast about this node.
	announceErr := g.updateMeta(func(m *NodeMeta) { m.Leaving = true }, timeout/2)
	if announceErr != nil {
		g.log.Warn("leave announcement not confirmed in time; some members may see a crash", "err", announceErr)
	}
	g.metaMu.Lock() // no metadata update may re-advertise this node once it leaves
	g.left.Store(true)
	g.metaMu.Unlock()
	wait := max(time.Until(deadline), time.Millisecond)
	if announceErr == nil || !g.othersStay() {
		// The others know from the announcement that this node leaves (or
		// no other member stays: a whole cluster stopped at once), and a
		// member that misses the leave message counts this node left when
		// it stops answering. memberlist waits for its leave message to go
		// out in a gossip round, which never comes once the others have
		// left too: it would wait out the whole timeout.
		wait = min(wait, leaveBroadcastWait)
	}
	if err := g.ml.Leave(wait); err != nil {
		if announceErr == nil {
			// memberlist never reports a leave message its queue dropped
			// (hashicorp/memberlist#263); the announcement covers it.
			g.log.Warn("memberlist leave not confirmed; the members know this node is leaving", "err", err)
			return nil
		}
		return fmt.Errorf("cluster: gossip leave: %w", err)
	}
	return nil
}

// leaveBroadcastWait bounds the wait for memberlist's leave message once
// the others know this node leaves.
const leaveBroadcastWait = time.Second

// othersStay reports whether another member is alive and not leaving.
func (g *Gossip) othersStay() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, m := range g.members {
		if m.ID != g.cfg.NodeID && m.State == MemberAlive {
			return true
		}
	}
	return false
}

// Shutdown stops gossip at once, without a Leave: the others will find this
// node dead. It stops the join loop, closes every event channel and returns
// when all of the Gossip's goroutines have ended. Safe to call more than once.
func (g *Gossip) Shutdown() error {
	var err error
	g.shutdown.Do(func() {
		g.leaveMu.Lock() // memberlist panics on a Leave after Shutdown
		defer g.leaveMu.Unlock()
		close(g.stop)
		err = g.ml.Shutdown()
		g.closeSubs()
		g.wg.Wait()
		g.log.Info("gossip stopped")
	})
	return err
}

func (g *Gossip) isClosed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed
}

func (g *Gossip) closeSubs() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	for s := range g.subs {
		close(s.done)
	}
	clear(g.subs)
}

// observe records a change memberlist reported and fans it out. It runs
// inside memberlist's callbacks, under memberlist's node lock: it must not
// block, nor call back into memberlist.
func (g *Gossip) observe(typ MemberEventType, n *memberlist.Node) {
	meta, err := decodeMeta(n.Meta)
	if err != nil {
		g.log.Warn("undecodable member metadata", "member", n.Name, "err", err)
	}
	// memberlist hands over no state (Node.State is never set): a leave is
	// graceful if the member announced it in its metadata first.
	var state MemberState
	switch {
	case typ == MemberLeave && meta.Leaving:
		state = MemberLeft
	case typ == MemberLeave:
		state = MemberDead
	case meta.Leaving:
		state = MemberLeaving
	default:
		state = MemberAlive
	}
	m := Member{
		ID:    n.Name,
		Addr:  net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))),
		Meta:  meta,
		State: state,
		Since: time.Now(),
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if old, ok := g.members[m.ID]; ok && old.State == m.State {
		m.Since = old.Since
	}
	g.members[m.ID] = &m
	for s := range g.subs {
		s.push(MemberEvent{Type: typ, Member: m})
	}
	if typ == MemberUpdate && state == MemberAlive {
		g.log.Debug("member updated", "member", m.ID, "meta", m.Meta)
	} else {
		g.log.Info("member "+state.String(), "member", m.ID, "addr", m.Addr, "raft_addr", m.Meta.RaftAddr, "zone", m.Meta.Zone)
	}
}

// memberSub is one subscription: a queue of at most one pending event per
// member, drained by its pump goroutine into out.
type memberSub struct {
	out    chan MemberEvent
	notify chan struct{} // capacity 1: "pending has something"
	done   chan struct{} // closed to end the subscription

	mu      sync.Mutex
	order   []string // member ids in the order their pending events arrived
	pending map[string]MemberEvent
}

// push queues ev, coalescing it with a pending event of the same member.
// It never blocks.
func (s *memberSub) push(ev MemberEvent) {
	s.mu.Lock()
	id := ev.Member.ID
	if old, ok := s.pending[id]; ok {
		if old.Type == MemberJoin && ev.Type == MemberUpdate {
			ev.Type = MemberJoin // the reader has not seen the join yet
		}
	} else {
		s.order = append(s.order, id)
	}
	s.pending[id] = ev
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

func (s *memberSub) pop() (MemberEvent, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.order) == 0 {
		return MemberEvent{}, false
	}
	id := s.order[0]
	s.order = s.order[1:]
	ev := s.pending[id]
	delete(s.pending, id)
	return ev, true
}

func (s *memberSub) pump(wg *sync.WaitGroup) {
	defer wg.Done()
	defer close(s.out)
	for {
		ev, ok := s.pop()
		if !ok {
			select {
			case <-s.notify:
				continue
			case <-s.done:
				return
			}
		}
		select {
		case s.out <- ev:
		case <-s.done:
			return
		}
	}
}

// gossipDelegate hands memberlist this node's metadata; eddy sends no user
// messages over gossip.
type gossipDelegate struct{ g *Gossip }

func (d gossipDelegate) NodeMeta(limit int) []byte {
	meta := *d.g.meta.Load()
	if len(meta) > limit { // cannot happen: encodeMeta checks the size
		return nil
	}
	return meta
}
func (gossipDelegate) NotifyMsg([]byte)                           {}
func (gossipDelegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (gossipDelegate) LocalState(join bool) []byte                { return nil }
func (gossipDelegate) MergeRemoteState(buf []byte, join bool)     {}

// gossipEvents turns memberlist's notifications into member events.
type gossipEvents struct{ g *Gossip }

func (e gossipEvents) NotifyJoin(n *memberlist.Node)   { e.g.observe(MemberJoin, n) }
func (e gossipEvents) NotifyLeave(n *memberlist.Node)  { e.g.observe(MemberLeave, n) }
func (e gossipEvents) NotifyUpdate(n *memberlist.Node) { e.g.observe(MemberUpdate, n) }

var (
	_ memberlist.Delegate      = gossipDelegate{}
	_ memberlist.EventDelegate = gossipEvents{}
)

func encodeMeta(m NodeMeta) ([]byte, error) {
	b, err := msgpack.Marshal(&m)
	if err != nil {
		return nil, fmt.Errorf("encode node meta: %w", err)
	}
	if len(b) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("node meta is %d bytes, more than memberlist's %d", len(b), memberlist.MetaMaxSize)
	}
	return b, nil
}

func decodeMeta(b []byte) (NodeMeta, error) {
	var m NodeMeta
	if len(b) == 0 {
		return m, nil
	}
	if err := msgpack.Unmarshal(b, &m); err != nil {
		return NodeMeta{}, fmt.Errorf("decode node meta: %w", err)
	}
	return m, nil
}
