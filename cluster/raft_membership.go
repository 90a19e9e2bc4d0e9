package cluster

import (
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

const (
	// raftChangeTimeout bounds the wait to enqueue a membership change.
	raftChangeTimeout = 5 * time.Second
	// reconcileEvery is how often the leader re-checks Raft membership against
	// gossip when nothing happens, which also retries a change that failed.
	reconcileEvery = time.Second
)

// While a node leads, it keeps the Raft configuration in line with gossip:
// planRaftMembership computes the changes a pass makes, without side effects,
// and Raft.reconcile makes them.

// raftChangeKind is what a raftChange does to the Raft configuration.
type raftChangeKind int

const (
	// raftRemove removes a server that left gossip, or stayed dead or unknown
	// to gossip past DeadGrace.
	raftRemove raftChangeKind = iota
	// raftPromote makes a non-voter a voter.
	raftPromote
	// raftAdd adds an alive gossip member that runs Raft.
	raftAdd
	// raftReaddress adds a server again at the address gossip now has for it,
	// with the suffrage it has.
	raftReaddress
)

// raftChange is one change of the Raft configuration.
type raftChange struct {
	Kind raftChangeKind
	ID   raft.ServerID
	// Addr is the server's address once changed; empty for raftRemove.
	Addr raft.ServerAddress
	// Suffrage is the removed server's (raftRemove), or the one the server has
	// once changed: raft.Voter is added with AddVoter, any other with
	// AddNonvoter.
	Suffrage raft.ServerSuffrage
	// Reason says why a server is removed.
	Reason string
	// Zone is the gossip zone of a server added or readdressed, for the log.
	Zone string
	// Voters is how many voters there are once a non-voter is promoted, for
	// the log.
	Voters int
}

func (c raftChange) String() string {
	switch c.Kind {
	case raftRemove:
		return fmt.Sprintf("remove %s %s: %s", suffrageName(c.Suffrage), c.ID, c.Reason)
	case raftPromote:
		return fmt.Sprintf("promote %s at %s: voters %d", c.ID, c.Addr, c.Voters)
	case raftAdd:
		return fmt.Sprintf("add %s %s at %s", suffrageName(c.Suffrage), c.ID, c.Addr)
	default:
		return fmt.Sprintf("readdress %s %s to %s", suffrageName(c.Suffrage), c.ID, c.Addr)
	}
}

func suffrageName(s raft.ServerSuffrage) string {
	if s == raft.Voter {
		return "voter"
	}
	return "non-voter"
}

// raftMembership is what a reconcile pass plans from.
type raftMembership struct {
	// Self is this node, the leader: it never removes itself.
	Self raft.ServerID
	// Servers is the latest Raft configuration.
	Servers []raft.Server
	// Members is gossip's member list, sorted by id.
	Members []Member
	// UnknownSince is since when each server has been unknown to gossip, as
	// the previous pass left it. The plan does not modify it.
	UnknownSince map[raft.ServerID]time.Time
	// Now is the time of the pass.
	Now time.Time
	// MaxVoters and DeadGrace are the RaftConfig's.
	MaxVoters int
	DeadGrace time.Duration
	// Failed lists changes of an earlier plan of the same pass that Raft
	// refused: the plan does not count them as made.
	Failed []raftChange
}

// raftMembershipPlan is the outcome of planRaftMembership.
type raftMembershipPlan struct {
	// Changes are to be made in order: each one was planned on the
	// configuration the ones before it leave (those in Failed aside).
	Changes []raftChange
	// UnknownSince is to be passed to the next pass: servers unknown to gossip
	// are recorded there, servers known again or removed are dropped.
	UnknownSince map[raft.ServerID]time.Time
	// Next is when the next pass is due: reconcileEvery, or sooner when a
	// dead or unknown server's grace runs out.
	Next time.Duration
}

// planRaftMembership plans one reconcile pass: remove servers that left
// gossip (at once, but not while only leaving) or stayed dead or unknown past
// DeadGrace, promote non-voters while voters are fewer than MaxVoters, and add
// alive gossip members that run Raft (voters up to MaxVoters, then
// non-voters), fixing addresses that changed. It never removes Self.
//
// Each change is planned on the configuration the changes before it leave,
// counting them as made unless they are in in.Failed: when Raft refuses
// change i, planning again with it in Failed yields the same first i+1
// changes and then what is right without change i.
func planRaftMembership(in raftMembership) raftMembershipPlan {
	plan := raftMembershipPlan{Next: reconcileEvery, UnknownSince: maps.Clone(in.UnknownSince)}
	if plan.UnknownSince == nil {
		plan.UnknownSince = make(map[raft.ServerID]time.Time)
	}
	// made adds c to the plan and reports whether to count it as made.
	made := func(c raftChange) bool {
		plan.Changes = append(plan.Changes, c)
		return !slices.Contains(in.Failed, c)
	}
	byID := make(map[string]Member, len(in.Members))
	for _, m := range in.Members {
		byID[m.ID] = m
	}
	inConfig := make(map[raft.ServerID]raft.Server, len(in.Servers))
	voters := 0
	for _, s := range in.Servers {
		inConfig[s.ID] = s
		if s.Suffrage == raft.Voter {
			voters++
		}
	}

	// Removals.
	for _, s := range in.Servers {
		if s.ID == in.Self {
			continue
		}
		m, known := byID[string(s.ID)]
		if known && (m.State == MemberAlive || m.State == MemberLeaving) {
			// A leaving member stays until it has left: it still follows the
			// FSM while its partitions move away.
			delete(plan.UnknownSince, s.ID)
			continue
		}
		var reason string
		if known && m.State == MemberLeft {
			reason = "left the cluster"
		} else {
			since := m.Since
			if !known {
				if _, ok := plan.UnknownSince[s.ID]; !ok {
					plan.UnknownSince[s.ID] = in.Now
				}
				since = plan.UnknownSince[s.ID]
			}
			if wait := since.Add(in.DeadGrace).Sub(in.Now); wait > 0 {
				plan.Next = min(plan.Next, wait)
				continue
			}
			reason = fmt.Sprintf("dead for %s, past the grace of %s", in.Now.Sub(since).Round(time.Millisecond), in.DeadGrace)
			if !known {
				reason = fmt.Sprintf("unknown to gossip for %s, past the grace of %s", in.Now.Sub(since).Round(time.Millisecond), in.DeadGrace)
			}
		}
		if !made(raftChange{Kind: raftRemove, ID: s.ID, Suffrage: s.Suffrage, Reason: reason}) {
			continue
		}
		delete(plan.UnknownSince, s.ID)
		delete(inConfig, s.ID)
		if s.Suffrage == raft.Voter {
			voters--
		}
	}

	// Promotions: non-voters already hold the FSM, so they come first.
	for _, m := range in.Members {
		if voters >= in.MaxVoters {
			break
		}
		s, ok := inConfig[raft.ServerID(m.ID)]
		if !ok || s.Suffrage == raft.Voter || m.State != MemberAlive {
			continue
		}
		addr := s.Address
		if m.Meta.RaftAddr != "" {
			addr = raft.ServerAddress(m.Meta.RaftAddr)
		}
		if !made(raftChange{Kind: raftPromote, ID: s.ID, Addr: addr, Suffrage: raft.Voter, Voters: voters + 1}) {
			continue
		}
		s.Suffrage, s.Address = raft.Voter, addr
		inConfig[s.ID] = s
		voters++
	}

	// Additions and address changes.
	for _, m := range in.Members {
		id, addr := raft.ServerID(m.ID), raft.ServerAddress(m.Meta.RaftAddr)
		if id == in.Self || m.State != MemberAlive || addr == "" {
			continue
		}
		s, ok := inConfig[id]
		if ok && s.Address == addr {
			continue
		}
		c := raftChange{Kind: raftAdd, ID: id, Addr: addr, Suffrage: raft.Nonvoter, Zone: m.Meta.Zone}
		if ok {
			c.Kind = raftReaddress
		}
		if ok && s.Suffrage == raft.Voter || !ok && voters < in.MaxVoters {
			c.Suffrage = raft.Voter
		}
		if made(c) && !ok && c.Suffrage == raft.Voter {
			voters++
		}
	}
	return plan
}

// startReconciler runs reconcileLoop until the returned function is called.
func (r *Raft) startReconciler() (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.reconcileLoop(done)
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}

// reconcileLoop keeps the Raft configuration in line with gossip while this
// node leads: after every membership event, when a dead member's grace runs
// out, and every reconcileEvery.
func (r *Raft) reconcileLoop(done <-chan struct{}) {
	events, cancel := r.gossip.Subscribe()
	defer cancel()
	timer := time.NewTimer(0)
	defer timer.Stop()
	var unknownSince map[raft.ServerID]time.Time
	for {
		select {
		case <-done:
			return
		case _, ok := <-events:
			if !ok {
				events = nil // gossip shut down: keep the timer
				continue
			}
		drain: // one reconcile for a burst of events
			for {
				select {
				case _, ok := <-events:
					if !ok {
						events = nil
						break drain
					}
				default:
					break drain
				}
			}
		case <-timer.C:
		}
		var next time.Duration
		unknownSince, next = r.reconcile(unknownSince)
		timer.Reset(next)
	}
}

// reconcile makes one pass: it makes the changes planRaftMembership plans
// from the Raft configuration and gossip, and logs each. It returns the
// unknownSince to pass to the next pass, and when that is due.
func (r *Raft) reconcile(unknownSince map[raft.ServerID]time.Time) (map[raft.ServerID]time.Time, time.Duration) {
	if r.raft.State() != raft.Leader {
		return unknownSince, reconcileEvery
	}
	f := r.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		r.log.Debug("reconcile: no configuration", "err", err)
		return unknownSince, reconcileEvery
	}
	in := raftMembership{
		Self:         raft.ServerID(r.cfg.NodeID),
		Servers:      f.Configuration().Servers,
		Members:      r.gossip.Members(),
		UnknownSince: unknownSince,
		Now:          time.Now(),
		MaxVoters:    r.cfg.MaxVoters,
		DeadGrace:    r.cfg.DeadGrace,
	}
	plan := makeRaftChanges(in, r.changeMembership)
	return plan.UnknownSince, plan.Next
}

// makeRaftChanges makes the changes planRaftMembership plans for in, in
// order, through change. When change fails, the rest of the pass is planned
// again without that change. It returns the last plan.
func makeRaftChanges(in raftMembership, change func(raftChange) error) raftMembershipPlan {
	plan := planRaftMembership(in)
	for i := 0; i < len(plan.Changes); i++ {
		if err := change(plan.Changes[i]); err != nil {
			in.Failed = append(in.Failed, plan.Changes[i])
			plan = planRaftMembership(in) // the same first i+1 changes
		}
	}
	return plan
}

// changeMembership makes c in the Raft configuration and logs it.
func (r *Raft) changeMembership(c raftChange) error {
	var err error
	switch {
	case c.Kind == raftRemove:
		err = r.raft.RemoveServer(c.ID, 0, raftChangeTimeout).Error()
	case c.Suffrage == raft.Voter:
		err = r.raft.AddVoter(c.ID, c.Addr, 0, raftChangeTimeout).Error()
	default:
		err = r.raft.AddNonvoter(c.ID, c.Addr, 0, raftChangeTimeout).Error()
	}
	switch c.Kind {
	case raftRemove:
		if err != nil {
			r.log.Warn("could not remove raft server", "server", c.ID, "reason", c.Reason, "err", err)
		} else {
			r.log.Info("removed raft server", "server", c.ID, "suffrage", c.Suffrage, "reason", c.Reason)
		}
	case raftPromote:
		if err != nil {
			r.log.Warn("could not promote raft non-voter", "server", c.ID, "err", err)
		} else {
			r.log.Info("promoted raft non-voter to voter", "server", c.ID, "voters", c.Voters, "max_voters", r.cfg.MaxVoters)
		}
	default:
		what := "changed raft server address"
		if c.Kind == raftAdd {
			what = "added raft " + suffrageName(c.Suffrage)
		}
		if err != nil {
			r.log.Warn("could not change raft configuration", "change", what, "server", c.ID, "addr", c.Addr, "err", err)
		} else {
			r.log.Info(what, "server", c.ID, "addr", c.Addr, "zone", c.Zone)
		}
	}
	return err
}
