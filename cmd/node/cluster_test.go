package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eddyrt/eddy"
)

// TestMain lets the test binary act as the node binary: the multi-process
// tests start it with EDDY_TEST_AS_NODE=1 and `run ...` arguments.
func TestMain(m *testing.M) {
	if os.Getenv("EDDY_TEST_AS_NODE") == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		c := &cli{stdout: os.Stdout, stderr: os.Stderr, lookupEnv: os.LookupEnv}
		code := c.main(ctx, os.Args[1:])
		stop()
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// newTestProcCluster makes a procCluster that is closed when the test ends,
// printing the nodes' and the nats-servers' log tails first if it failed.
func newTestProcCluster(t *testing.T, cfg procConfig) *procCluster {
	t.Helper()
	pc, err := newProcCluster(cfg)
	if pc != nil {
		t.Cleanup(pc.close)
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("logs:\n%s", pc.logTails(60))
			}
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	return pc
}

// startProcCluster starts NATS and three node processes (the test binary as
// the node binary) with the bank app, and funds the accounts.
func startProcCluster(t *testing.T, partitions, replicas int, extraArgs ...string) (*procCluster, *bankLoad, []string) {
	t.Helper()
	pc := newTestProcCluster(t, procConfig{Dir: t.TempDir(), Exe: os.Args[0], Env: []string{"EDDY_TEST_AS_NODE=1"},
		Partitions: partitions, Replicas: replicas, ExtraArgs: extraArgs})
	ids := []string{"n1", "n2", "n3"}
	for _, id := range ids {
		if err := pc.start(id, len(ids)); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	if _, err := pc.waitSettled(ctx, ids, 90*time.Second); err != nil {
		t.Fatal(err)
	}
	load := newBankLoad(pc, 200)
	if err := load.fund(ctx); err != nil {
		t.Fatal(err)
	}
	return pc, load, ids
}

// runLoad sends transfers until the test ends or stop is called.
func runLoad(t *testing.T, load *bankLoad, rate float64) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := load.run(ctx, rate, uint64(time.Now().UnixNano())); err != nil {
			t.Errorf("load: %v", err)
		}
	})
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}

// The node binary x3 on loopback plus a NATS server, under bank load: a
// SIGKILLed node's partitions become active elsewhere; a fourth node takes
// its share; killing the Raft leader elects a new one and keeps the
// assignment; a node paused (SIGSTOP) until its partitions move is fenced
// when it wakes; the whole cluster stops and restarts with its state. After
// all of it, every deposit and transfer was applied exactly once and every
// credit delivered once.
func TestMultiProcessCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts node processes")
	}
	pc, load, ids := startProcCluster(t, 8, 0)
	ctx := context.Background()
	stopLoad := runLoad(t, load, 200)
	// The kill below comes under load: once every partition has committed
	// since the load began.
	if _, _, err := pc.waitCommitted(ctx, ids, time.Now(), 30*time.Second); err != nil {
		t.Fatal(err)
	}

	// SIGKILL a node that owns partitions (not the leader).
	st, err := pc.settled(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	victim := pickVictim(st, 0)
	killed := time.Now()
	if err := pc.kill(victim); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.waitSettled(ctx, without(ids, victim), 30*time.Second); err != nil {
		t.Fatalf("after SIGKILL of %s: %v", victim, err)
	}
	t.Logf("SIGKILL %s (owned %v): all partitions active again in %v", victim, ownedBy(st, victim), time.Since(killed))
	if err := pc.start(victim, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.waitSettled(ctx, ids, 60*time.Second); err != nil {
		t.Fatalf("after %s restarted: %v", victim, err)
	}

	// `node status` on any member shows the members, the leader and the assignment.
	var out strings.Builder
	c := &cli{stdout: &out, stderr: &out, lookupEnv: func(string) (string, bool) { return "", false }}
	if code := c.main(ctx, []string{"status", "--http", pc.node(victim).http}); code != 0 {
		t.Fatalf("node status: exit %d: %s", code, out.String())
	}
	for _, want := range []string{"Raft leader " + st.Leader, "n1  ", "n2  ", "n3  ", "bank  7  ", "partition actors on node " + victim} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("node status lacks %q:\n%s", want, out.String())
		}
	}

	// A fourth node joins: the actives rebalance to two per node.
	joined := time.Now()
	ids, st = joinNode(t, pc, ids, "n4")
	t.Logf("n4 joined: rebalanced in %v", time.Since(joined))
	for _, id := range ids {
		if n := len(ownedBy(st, id)); n != 2 {
			t.Fatalf("%s owns %d partitions after the join, want 2", id, n)
		}
	}

	// Kill the Raft leader: a new leader, the assignment kept.
	leader := st.Leader
	before := map[int][2]any{}
	for _, p := range st.Partitions {
		before[p.Partition] = [2]any{p.Active, p.Epoch}
	}
	killed = time.Now()
	if err := pc.kill(leader); err != nil {
		t.Fatal(err)
	}
	after, err := pc.waitSettled(ctx, without(ids, leader), 30*time.Second)
	if err != nil {
		t.Fatalf("after killing leader %s: %v", leader, err)
	}
	t.Logf("leader %s killed: new leader %s (term %d), all active in %v", leader, after.Leader, after.Term, time.Since(killed))
	if after.Leader == leader {
		t.Fatal("the dead leader still leads")
	}
	for _, p := range after.Partitions {
		if b := before[p.Partition]; b[0] != leader && (b[0] != p.Active || b[1] != p.Epoch) {
			t.Errorf("partition %d moved from %v to %s/%d though its node lives", p.Partition, b, p.Active, p.Epoch)
		}
	}
	if err := pc.start(leader, 0); err != nil {
		t.Fatal(err)
	}
	if st, err = pc.waitSettled(ctx, ids, 60*time.Second); err != nil {
		t.Fatalf("after %s restarted: %v", leader, err)
	}

	// Zombie: pause a node that owns partitions until they move, then wake it.
	zombie := pickVictim(st, 1)
	owned := ownedBy(st, zombie)
	if err := pc.signal(zombie, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.waitSettled(ctx, without(ids, zombie), 30*time.Second); err != nil {
		t.Fatalf("after SIGSTOP of %s: %v", zombie, err)
	}
	// The new owners commit at their new epochs before the zombie wakes.
	if _, _, err := pc.waitCommitted(ctx, without(ids, zombie), time.Now(), 30*time.Second); err != nil {
		t.Fatalf("after SIGSTOP of %s: %v", zombie, err)
	}
	logStart, _ := os.Stat(pc.node(zombie).logPath)
	if err := pc.signal(zombie, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.waitSettled(ctx, ids, 60*time.Second); err != nil {
		t.Fatalf("after SIGCONT of %s: %v", zombie, err)
	}
	t.Logf("zombie %s (owned %v) woke up and rejoined", zombie, owned)
	// Each partition actor of the zombie either tried to commit and was
	// fenced, or was stopped by the assignment before it tried. (That no
	// commit of the zombie landed shows in the bank's totals at the end.)
	var logs []byte
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(string(logs), `"msg":"partition actor stopped"`) < len(owned) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		logs, _ = os.ReadFile(pc.node(zombie).logPath)
		logs = logs[min(len(logs), int(logStart.Size())):] // since SIGCONT
	}
	if n := strings.Count(string(logs), `"msg":"partition actor stopped"`); n < len(owned) {
		t.Errorf("%d of the zombie's %d partition actors stopped", n, len(owned))
	}
	for _, l := range strings.Split(string(logs), "\n") {
		if strings.Contains(l, "fenced by a newer owner; stopping") {
			t.Logf("zombie: %s", l)
		}
	}

	// Stop the whole cluster and start it again: the state is intact.
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Go(func() {
			if err := pc.stop(id, 30*time.Second); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for _, id := range ids {
		if err := pc.start(id, 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pc.waitSettled(ctx, ids, 90*time.Second); err != nil {
		t.Fatalf("after a full restart: %v", err)
	}
	// The restarted cluster takes the load: every partition commits again.
	if _, _, err := pc.waitCommitted(ctx, ids, time.Now(), 30*time.Second); err != nil {
		t.Fatalf("after a full restart: %v", err)
	}
	stopLoad()
	sum, err := load.waitTotals(ctx, ids[0], 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d transfers: %+v", load.sent(), sum)
}

// joinNode starts node id, waits until the cluster with it has settled and
// returns the members and the assignment.
func joinNode(t *testing.T, pc *procCluster, ids []string, id string) ([]string, eddy.ClusterStatus) {
	t.Helper()
	if err := pc.start(id, 0); err != nil {
		t.Fatal(err)
	}
	ids = append(ids, id)
	st, err := pc.waitSettled(context.Background(), ids, 60*time.Second)
	if err != nil {
		t.Fatalf("after %s joined: %v", id, err)
	}
	return ids, st
}

// restoresSince returns, per "node/partition", the restores logged since t:
// whether each replayed the whole changelog.
func restoresSince(pc *procCluster, ids []string, t time.Time) map[string]bool {
	full := map[string]bool{}
	for _, id := range ids {
		for _, m := range pc.logged(id, "restored from changelog", t) {
			full[fmt.Sprintf("%s/%v", id, m["partition"])] = m["full"] == true
		}
	}
	return full
}

// With hot replicas, under bank load: a SIGKILLed owner's partitions are
// promoted on their replicas (the log shows a promotion and no changelog
// replay); an owner paused past detection finds itself fenced when it wakes;
// a fourth node takes its share by warm-up moves; with five nodes (five Raft
// voters), a partition whose replica and then owner are killed is restored
// from its changelog (the cold path). After all of it the bank's totals are
// exact.
func TestMultiProcessFailoverWithReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("starts node processes")
	}
	pc, load, ids := startProcCluster(t, 6, 1, "--max-voters", "5")
	ctx := context.Background()
	stopLoad := runLoad(t, load, 200)

	// SIGKILL an owner: its replicas take over.
	if err := pc.waitReplicasWarm(ctx, ids[0], 60*time.Second); err != nil {
		t.Fatal(err)
	}
	st, err := pc.settled(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	victim := pickVictim(st, 0)
	owned := ownedBy(st, victim)
	killed := time.Now()
	if err := pc.kill(victim); err != nil {
		t.Fatal(err)
	}
	survivors := without(ids, victim)
	after, err := pc.waitSettled(ctx, survivors, 30*time.Second)
	if err != nil {
		t.Fatalf("after SIGKILL of %s: %v", victim, err)
	}
	t.Logf("SIGKILL %s (owned %v): all active again in %v", victim, owned, time.Since(killed))
	promoted := map[string]bool{}
	for _, m := range pc.logged(after.Leader, "assignment changed", killed) {
		promoted[fmt.Sprint(m["change"])] = true
	}
	full := restoresSince(pc, survivors, killed)
	for _, p := range owned {
		successor := after.Partitions[p].Active
		if full[fmt.Sprintf("%s/%d", successor, p)] {
			t.Errorf("partition %d replayed its whole changelog on %s: a restore, not a promotion", p, successor)
		}
		found := false
		for change := range promoted {
			found = found || strings.HasPrefix(change, fmt.Sprintf("bank/%d: active %s", p, successor)) && strings.Contains(change, "promote replica "+successor)
		}
		if !found {
			t.Errorf("partition %d: the leader logged no promotion of %s", p, successor)
		}
	}
	if err := pc.start(victim, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.waitSettled(ctx, ids, 60*time.Second); err != nil {
		t.Fatal(err)
	}

	// Pause an owner past detection; its replicas are promoted; it wakes fenced.
	if err := pc.waitReplicasWarm(ctx, ids[0], 60*time.Second); err != nil {
		t.Fatal(err)
	}
	st, _ = pc.settled(ctx, ids)
	zombie := pickVictim(st, 1)
	if err := pc.signal(zombie, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.waitSettled(ctx, without(ids, zombie), 30*time.Second); err != nil {
		t.Fatalf("after SIGSTOP of %s: %v", zombie, err)
	}
	// The new owners commit at their new epochs before the zombie wakes.
	if _, _, err := pc.waitCommitted(ctx, without(ids, zombie), time.Now(), 30*time.Second); err != nil {
		t.Fatalf("after SIGSTOP of %s: %v", zombie, err)
	}
	if err := pc.signal(zombie, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.waitSettled(ctx, ids, 60*time.Second); err != nil {
		t.Fatalf("after SIGCONT of %s: %v", zombie, err)
	}

	// A fourth node joins under load: warm-up moves hand it its share.
	joined := time.Now()
	ids, st = joinNode(t, pc, ids, "n4")
	warmed := 0
	for _, m := range pc.logged(st.Leader, "assignment changed", joined) {
		if strings.Contains(fmt.Sprint(m["change"]), "hand over to n4") {
			warmed++
		}
	}
	if got := len(ownedBy(st, "n4")); got == 0 || warmed < got {
		t.Errorf("n4 owns %d partitions, %d handed over after a warm-up", got, warmed)
	}
	t.Logf("n4 joined: %d partitions handed over after warm-up, settled in %v", warmed, time.Since(joined))

	// A fifth node, so that two nodes can die with Raft keeping its quorum.
	ids, _ = joinNode(t, pc, ids, "n5")

	// Kill a partition's replica and its owner together: no replica is
	// warm, so the partition restores from its changelog.
	if err := pc.waitReplicasWarm(ctx, ids[0], 60*time.Second); err != nil {
		t.Fatal(err)
	}
	st, _ = pc.settled(ctx, ids)
	var cold eddyAssignment
	for _, p := range st.Partitions {
		if p.Active != st.Leader && len(p.Replicas) == 1 && p.Replicas[0].Node != st.Leader {
			cold = eddyAssignment{p.Partition, p.Active, p.Replicas[0].Node}
			break
		}
	}
	if cold.active == "" {
		t.Fatalf("no partition with its active and replica off the leader: %+v", st.Partitions)
	}
	killed = time.Now()
	for _, id := range []string{cold.replica, cold.active} {
		if err := pc.signal(id, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{cold.replica, cold.active} {
		<-pc.node(id).exited
	}
	if _, err := pc.waitSettled(ctx, without(without(ids, cold.replica), cold.active), 60*time.Second); err != nil {
		t.Fatalf("after killing replica %s and owner %s: %v", cold.replica, cold.active, err)
	}
	after, err = pc.settled(ctx, without(without(ids, cold.replica), cold.active))
	if err != nil {
		t.Fatal(err)
	}
	// The successor held no copy when the kills happened: it replayed the
	// changelog, either as the partition actor's restore or, when the
	// leader placed a new replica on it in the few ms between seeing the
	// two deaths, as that replica's catch-up before its promotion.
	owner := after.Partitions[cold.partition].Active
	full = restoresSince(pc, []string{owner}, killed)
	_, restored := full[fmt.Sprintf("%s/%d", owner, cold.partition)]
	caughtUp := false
	for _, m := range pc.logged(owner, "hot replica started", killed) {
		caughtUp = caughtUp || fmt.Sprint(m["partition"]) == fmt.Sprint(cold.partition) && fmt.Sprint(m["behind"]) != "0"
	}
	if !restored && !caughtUp {
		t.Errorf("partition %d: %s replayed nothing of its changelog", cold.partition, owner)
	}
	t.Logf("replica %s and owner %s of partition %d killed: %s replayed the changelog (as the actor: %v, whole: %v; as a new replica: %v)",
		cold.replica, cold.active, cold.partition, owner, restored, full[fmt.Sprintf("%s/%d", owner, cold.partition)], caughtUp)
	for _, id := range []string{cold.replica, cold.active} {
		if err := pc.start(id, 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pc.waitSettled(ctx, ids, 60*time.Second); err != nil {
		t.Fatal(err)
	}

	stopLoad()
	sum, err := load.waitTotals(ctx, ids[0], 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d transfers: %+v", load.sent(), sum)
}

// eddyAssignment is one partition's active and only replica.
type eddyAssignment struct {
	partition       int
	active, replica string
}
