package cluster

import (
	"cmp"
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// raftPlanTestNow is the time of every planned pass.
var raftPlanTestNow = time.Unix(1_700_000_000, 0)

func raftPlanTestServer(id string, s raft.ServerSuffrage, addr string) raft.Server {
	if addr == "" {
		addr = id + ":7947"
	}
	return raft.Server{ID: raft.ServerID(id), Address: raft.ServerAddress(addr), Suffrage: s}
}

func raftPlanTestVoter(id string) raft.Server {
	return raftPlanTestServer(id, raft.Voter, "")
}

func raftPlanTestNonvoter(id string) raft.Server {
	return raftPlanTestServer(id, raft.Nonvoter, "")
}

// raftPlanTestMember is a gossip member in state st since ago before now,
// whose Raft runs at id:7947.
func raftPlanTestMember(id string, st MemberState, ago time.Duration) Member {
	return Member{ID: id, State: st, Since: raftPlanTestNow.Add(-ago), Meta: NodeMeta{RaftAddr: id + ":7947"}}
}

func raftPlanTestAlive(ids ...string) []Member {
	var ms []Member
	for _, id := range ids {
		ms = append(ms, raftPlanTestMember(id, MemberAlive, time.Hour))
	}
	return ms
}

// raftPlanTestRun makes a pass as Raft.reconcile does, with Raft refusing
// the changes whose String starts with one of refuse. It returns the changes
// tried, a refused one followed by " (refused)", and the last plan.
func raftPlanTestRun(in raftMembership, refuse []string) ([]string, raftMembershipPlan) {
	var tried []string
	plan := makeRaftChanges(in, func(c raftChange) error {
		for _, r := range refuse {
			if strings.HasPrefix(c.String(), r) {
				tried = append(tried, c.String()+" (refused)")
				return errors.New("refused")
			}
		}
		tried = append(tried, c.String())
		return nil
	})
	return tried, plan
}

func TestPlanRaftMembership(t *testing.T) {
	const grace = 30 * time.Second
	voter, nonvoter, member := raftPlanTestVoter, raftPlanTestNonvoter, raftPlanTestMember
	alive := raftPlanTestAlive
	noRaft := alive("n2")[0]
	noRaft.Meta.RaftAddr = ""
	moved := func(m Member) Member { m.Meta.RaftAddr = m.ID + ":8000"; return m }
	now := raftPlanTestNow
	cases := []struct {
		name         string
		maxVoters    int // 3 if 0
		deadGrace    time.Duration
		servers      []raft.Server
		members      []Member // n1, the leader, is added alive unless listed
		unknownSince map[raft.ServerID]time.Time
		refuse       []string // changes Raft refuses, by prefix
		want         []string
		wantUnknown  map[raft.ServerID]time.Time
		wantNext     time.Duration // reconcileEvery if 0
	}{{
		name:    "a new member joins as a voter while voters are fewer than MaxVoters",
		servers: []raft.Server{voter("n1")},
		members: alive("n2"),
		want:    []string{"add voter n2 at n2:7947"},
	}, {
		name:    "new members join as voters up to MaxVoters, then as non-voters",
		servers: []raft.Server{voter("n1")},
		members: alive("n2", "n3", "n4", "n5"),
		want:    []string{"add voter n2 at n2:7947", "add voter n3 at n3:7947", "add non-voter n4 at n4:7947", "add non-voter n5 at n5:7947"},
	}, {
		name:      "with MaxVoters 1 every member joins as a non-voter",
		maxVoters: 1,
		servers:   []raft.Server{voter("n1")},
		members:   alive("n2"),
		want:      []string{"add non-voter n2 at n2:7947"},
	}, {
		name:    "members in the configuration at their address are left alone",
		servers: []raft.Server{voter("n1"), voter("n2"), voter("n3"), nonvoter("n4")},
		members: alive("n2", "n3", "n4"),
	}, {
		name:    "a member that does not run raft yet, or is leaving or dead, is not added",
		servers: []raft.Server{voter("n1")},
		members: []Member{noRaft, member("n3", MemberLeaving, 0), member("n4", MemberDead, time.Hour), member("n5", MemberLeft, time.Hour)},
	}, {
		name:     "a dead member stays within its grace; the next pass is due when the grace runs out",
		servers:  []raft.Server{voter("n1"), voter("n2"), voter("n3")},
		members:  append(alive("n2"), member("n3", MemberDead, grace-300*time.Millisecond)),
		wantNext: 300 * time.Millisecond,
	}, {
		name:    "a dead member is removed past its grace, and a non-voter promoted to its seat",
		servers: []raft.Server{voter("n1"), voter("n2"), voter("n3"), nonvoter("n4")},
		members: append(alive("n2", "n4"), member("n3", MemberDead, grace+time.Second)),
		want:    []string{"remove voter n3: dead for 31s, past the grace of 30s", "promote n4 at n4:7947: voters 3"},
	}, {
		name:      "with no grace a dead member is removed at once",
		deadGrace: -1,
		servers:   []raft.Server{voter("n1"), nonvoter("n2")},
		members:   []Member{member("n2", MemberDead, 0)},
		want:      []string{"remove non-voter n2: dead for 0s, past the grace of 0s"},
	}, {
		name:    "a member that left is removed at once",
		servers: []raft.Server{voter("n1"), voter("n2"), voter("n3")},
		members: append(alive("n2"), member("n3", MemberLeft, time.Millisecond)),
		want:    []string{"remove voter n3: left the cluster"},
	}, {
		name:    "a leaving member stays, and is not promoted",
		servers: []raft.Server{voter("n1"), nonvoter("n2")},
		members: []Member{member("n2", MemberLeaving, time.Hour)},
	}, {
		name:    "the leader never removes itself",
		servers: []raft.Server{voter("n1"), voter("n2")},
		members: append(alive("n2"), member("n1", MemberDead, time.Hour)),
	}, {
		name:        "a server unknown to gossip is recorded",
		servers:     []raft.Server{voter("n1"), voter("n2"), voter("n3")},
		members:     alive("n2"),
		wantUnknown: map[raft.ServerID]time.Time{"n3": now},
	}, {
		name:         "a server unknown to gossip past the grace is removed and forgotten",
		servers:      []raft.Server{voter("n1"), voter("n2"), voter("n3")},
		members:      alive("n2"),
		unknownSince: map[raft.ServerID]time.Time{"n3": now.Add(-grace - 2*time.Second)},
		want:         []string{"remove voter n3: unknown to gossip for 32s, past the grace of 30s"},
	}, {
		name:         "a server unknown within the grace waits for it",
		servers:      []raft.Server{voter("n1"), voter("n2"), voter("n3")},
		members:      alive("n2"),
		unknownSince: map[raft.ServerID]time.Time{"n3": now.Add(-grace + 100*time.Millisecond)},
		wantUnknown:  map[raft.ServerID]time.Time{"n3": now.Add(-grace + 100*time.Millisecond)},
		wantNext:     100 * time.Millisecond,
	}, {
		name:         "a server known to gossip again is forgotten as unknown",
		servers:      []raft.Server{voter("n1"), voter("n2")},
		members:      alive("n2"),
		unknownSince: map[raft.ServerID]time.Time{"n2": now.Add(-time.Second)},
	}, {
		name:         "servers no longer in the configuration stay recorded",
		servers:      []raft.Server{voter("n1")},
		unknownSince: map[raft.ServerID]time.Time{"n9": now.Add(-time.Hour)},
		wantUnknown:  map[raft.ServerID]time.Time{"n9": now.Add(-time.Hour)},
	}, {
		name:    "a changed address is fixed, keeping the suffrage",
		servers: []raft.Server{voter("n1"), voter("n2"), voter("n3"), nonvoter("n4")},
		members: []Member{moved(alive("n2")[0]), alive("n3")[0], moved(alive("n4")[0])},
		want:    []string{"readdress voter n2 to n2:8000", "readdress non-voter n4 to n4:8000"},
	}, {
		name:    "a promotion takes gossip's new address",
		servers: []raft.Server{voter("n1"), nonvoter("n2")},
		members: []Member{moved(alive("n2")[0])},
		want:    []string{"promote n2 at n2:8000: voters 2"},
	}, {
		name:    "a non-voter not running raft any more is promoted at its old address",
		servers: []raft.Server{voter("n1"), nonvoter("n2")},
		members: []Member{noRaft},
		want:    []string{"promote n2 at n2:7947: voters 2"},
	}, {
		name:    "promotions stop at MaxVoters; the others stay non-voters",
		servers: []raft.Server{voter("n1"), nonvoter("n2"), nonvoter("n3"), nonvoter("n4")},
		members: alive("n2", "n3", "n4"),
		want:    []string{"promote n2 at n2:7947: voters 2", "promote n3 at n3:7947: voters 3"},
	}, {
		name:    "voters beyond MaxVoters are not demoted",
		servers: []raft.Server{voter("n1"), voter("n2"), voter("n3"), voter("n4"), voter("n5")},
		members: alive("n2", "n3", "n4", "n5", "n6"),
		want:    []string{"add non-voter n6 at n6:7947"},
	}, {
		name:    "a refused removal of a voter frees no seat",
		servers: []raft.Server{voter("n1"), voter("n2"), voter("n3"), nonvoter("n4")},
		members: append(alive("n2", "n4"), member("n3", MemberLeft, 0)),
		refuse:  []string{"remove voter n3"},
		want:    []string{"remove voter n3: left the cluster (refused)"},
	}, {
		name:        "a refused removal of an unknown server keeps it recorded",
		deadGrace:   -1,
		servers:     []raft.Server{voter("n1"), voter("n2")},
		refuse:      []string{"remove voter n2"},
		want:        []string{"remove voter n2: unknown to gossip for 0s, past the grace of 0s (refused)"},
		wantUnknown: map[raft.ServerID]time.Time{"n2": now},
	}, {
		name:    "a refused promotion: the next non-voter takes the seat",
		servers: []raft.Server{voter("n1"), voter("n2"), nonvoter("n3"), nonvoter("n4")},
		members: []Member{alive("n2")[0], moved(alive("n3")[0]), alive("n4")[0]},
		refuse:  []string{"promote n3"},
		want: []string{"promote n3 at n3:8000: voters 3 (refused)", "promote n4 at n4:7947: voters 3",
			"readdress non-voter n3 to n3:8000"},
	}, {
		name:    "a refused voter: the next new member takes the seat",
		servers: []raft.Server{voter("n1"), voter("n2")},
		members: alive("n2", "n3", "n4", "n5"),
		refuse:  []string{"add voter n3"},
		want:    []string{"add voter n3 at n3:7947 (refused)", "add voter n4 at n4:7947", "add non-voter n5 at n5:7947"},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := raftMembership{
				Self:         "n1",
				Servers:      tc.servers,
				Members:      tc.members,
				UnknownSince: tc.unknownSince,
				Now:          now,
				MaxVoters:    cmp.Or(tc.maxVoters, 3),
				DeadGrace:    max(0, cmp.Or(tc.deadGrace, grace)),
			}
			if !slices.ContainsFunc(in.Members, func(m Member) bool { return m.ID == "n1" }) {
				in.Members = append(in.Members, alive("n1")...)
			}
			slices.SortFunc(in.Members, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
			before := fmt.Sprint(in.UnknownSince)
			tried, plan := raftPlanTestRun(in, tc.refuse)
			if !slices.Equal(tried, tc.want) {
				t.Errorf("changes:\n got %q\nwant %q", tried, tc.want)
			}
			if got, want := fmt.Sprint(plan.UnknownSince), fmt.Sprint(tc.wantUnknown); got != want {
				t.Errorf("unknownSince: got %s, want %s", got, want)
			}
			if want := cmp.Or(tc.wantNext, reconcileEvery); plan.Next != want {
				t.Errorf("next pass in %s, want %s", plan.Next, want)
			}
			if after := fmt.Sprint(in.UnknownSince); after != before {
				t.Errorf("the plan modified its input unknownSince: %s, was %s", after, before)
			}
		})
	}
}

// TestPlanRaftMembershipProperties plans random passes with random refusals
// and checks what Raft.reconcile relies on: planning again with a refused
// change keeps the changes up to it, the leader is never removed, voters
// are only added below MaxVoters, and only known members are added.
func TestPlanRaftMembershipProperties(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	states := []MemberState{MemberAlive, MemberLeaving, MemberDead, MemberLeft}
	addrs := []string{"", "a:1", "b:1"}
	for iter := range 2000 {
		in := raftMembership{
			Self:         "n0",
			UnknownSince: map[raft.ServerID]time.Time{},
			Now:          raftPlanTestNow,
			MaxVoters:    []int{1, 3, 5}[rng.Intn(3)],
			DeadGrace:    time.Duration(rng.Intn(4)) * 10 * time.Second,
		}
		for i := range 1 + rng.Intn(8) {
			id := fmt.Sprintf("n%d", i)
			if i == 0 || rng.Intn(3) > 0 {
				s := raftPlanTestServer(id, []raft.ServerSuffrage{raft.Voter, raft.Nonvoter}[rng.Intn(2)], addrs[1+rng.Intn(2)])
				in.Servers = append(in.Servers, s)
			}
			if rng.Intn(5) > 0 {
				m := raftPlanTestMember(id, states[rng.Intn(4)], time.Duration(rng.Intn(50))*time.Second)
				m.Meta.RaftAddr = addrs[rng.Intn(3)]
				in.Members = append(in.Members, m)
			}
			if rng.Intn(3) == 0 {
				in.UnknownSince[raft.ServerID(id)] = raftPlanTestNow.Add(-time.Duration(rng.Intn(50)) * time.Second)
			}
		}
		rng.Shuffle(len(in.Servers), func(i, j int) { in.Servers[i], in.Servers[j] = in.Servers[j], in.Servers[i] })
		refuseP := rng.Float64()

		voters := 0
		for _, s := range in.Servers {
			if s.Suffrage == raft.Voter {
				voters++
			}
		}
		limit := max(voters, in.MaxVoters)
		plan := planRaftMembership(in)
		for i := 0; i < len(plan.Changes); i++ {
			c := plan.Changes[i]
			fail := func(format string, a ...any) {
				t.Fatalf("case %d, change %d %q: %s\nin: %+v", iter, i, c, fmt.Sprintf(format, a...), in)
			}
			switch {
			case c.Kind == raftRemove && c.ID == in.Self:
				fail("the leader removes itself")
			case c.Kind != raftRemove && !slices.ContainsFunc(in.Members, func(m Member) bool { return m.ID == string(c.ID) && m.State == MemberAlive }):
				fail("adds a server that is not an alive member")
			}
			if rng.Float64() < refuseP {
				in.Failed = append(in.Failed, c)
				again := planRaftMembership(in)
				if len(again.Changes) <= i || !slices.Equal(again.Changes[:i+1], plan.Changes[:i+1]) {
					fail("planning again without it changes what came before:\n%q\n%q", plan.Changes, again.Changes)
				}
				plan = again
				continue
			}
			switch {
			case c.Kind == raftRemove && c.Suffrage == raft.Voter:
				voters--
			case c.Kind == raftPromote, c.Kind == raftAdd && c.Suffrage == raft.Voter:
				voters++
			}
			if voters > limit {
				fail("%d voters, more than MaxVoters %d and the %d before", voters, in.MaxVoters, limit)
			}
		}
	}
}
