package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/examples/apps"
	"github.com/eddyrt/eddy/internal/pgtest"
)

// The bank with its state in PostgreSQL (--state-store postgres, no hot
// replicas), three node processes under bank load from the test's
// producer: a SIGKILLed owner's partitions are claimed by the others and
// commit again (the failover gaps, as PostgreSQL stamped the commits, are
// logged); the killed node restarts and takes its share back; an owner
// paused (SIGSTOP) until its partitions have committed at newer epochs
// elsewhere wakes and never commits again at its old epochs; PostgreSQL
// crashes (immediate shutdown) and restarts under the nodes, and every
// partition commits again. A trigger records every update of the runtime
// table, so the fencing invariants are checked on every commit, not on
// samples. At the end the bank's totals are exact, through a node's HTTP API
// and in the state table itself, and no outbox row is left.
func TestMultiProcessBankOnPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("starts node and PostgreSQL processes")
	}
	const partitions = 6
	pg := pgtest.New(t)
	dsn := pg.DSN("postgres")
	began := time.Now()
	pc, load, ids := startProcCluster(t, partitions, 0, "--state-store", "postgres", "--pg-dsn", dsn)
	ctx := context.Background()
	audit := startRuntimeAudit(t, ctx, dsn, partitions)
	stopLoad := runLoad(t, load, 200)
	// Every partition commits under load before the first fault.
	if err := audit.waitCommits(ctx, 30*time.Second, "a commit under load", allPartitions(partitions),
		func(int, runtimeUpdate) bool { return true }); err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster up, accounts funded, load running: %v", time.Since(began).Round(time.Millisecond))

	// 1. SIGKILL an owner (not the Raft leader): the survivors claim its
	// partitions and commit them at newer epochs.
	st, err := pc.settled(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	victim := pickVictim(st, 0)
	moved := epochsOf(st, victim)
	killed := time.Now()
	if err := pc.kill(victim); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.waitSettled(ctx, without(ids, victim), 30*time.Second); err != nil {
		t.Fatalf("after SIGKILL of %s: %v", victim, err)
	}
	if err := audit.waitMoved(ctx, 30*time.Second, moved); err != nil {
		t.Fatalf("after SIGKILL of %s: %v", victim, err)
	}
	t.Logf("SIGKILL %s (owned %v): every partition committing again after %v; failover gaps (last commit of the dead owner to first of the new one): %s",
		victim, keysOf(moved), time.Since(killed).Round(time.Millisecond), audit.gaps(moved))

	// 2. The killed node restarts with its data and takes its share back:
	// each partition handed over commits at the new owner's epoch. (Before
	// the pause below, which needs two live nodes besides the paused one
	// for Raft's quorum.)
	st, err = pc.settled(ctx, without(ids, victim))
	if err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	if err := pc.start(victim, 0); err != nil {
		t.Fatal(err)
	}
	after, err := pc.waitSettled(ctx, ids, 60*time.Second)
	if err != nil {
		t.Fatalf("after %s restarted: %v", victim, err)
	}
	handed, before := epochsOf(after, victim), epochsOf(st, "")
	for p := range handed {
		handed[p] = before[p]
	}
	if len(handed) == 0 {
		t.Fatalf("%s rejoined but owns no partition: %+v", victim, after.Partitions)
	}
	if err := audit.waitMoved(ctx, 30*time.Second, handed); err != nil {
		t.Fatalf("after %s restarted: %v", victim, err)
	}
	t.Logf("%s restarted and rejoined in %v, took back %v; handover gaps: %s",
		victim, time.Since(restarted).Round(time.Millisecond), keysOf(handed), audit.gaps(handed))

	// 3. Zombie: pause an owner until its partitions have committed at
	// newer epochs on the others, then wake it.
	st = after
	zombie := pickVictim(st, 1)
	owned := epochsOf(st, zombie)
	zombieOwner := audit.ownerOf(keysOf(owned)[0])
	paused := time.Now()
	if err := pc.signal(zombie, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.waitSettled(ctx, without(ids, zombie), 30*time.Second); err != nil {
		t.Fatalf("after SIGSTOP of %s: %v", zombie, err)
	}
	if err := audit.waitMoved(ctx, 30*time.Second, owned); err != nil {
		t.Fatalf("after SIGSTOP of %s: %v", zombie, err)
	}
	// A claim waits for the row lock of a commit the paused owner had begun:
	// until PostgreSQL ends its session (idle_in_transaction_session_timeout).
	held := strings.Count(pg.LogTail(4<<20), "terminating connection due to idle-in-transaction timeout")
	t.Logf("SIGSTOP %s (owner %s, owned %v): its partitions committed elsewhere after %v; gaps: %s; sessions of the paused owner ended inside a transaction: %d",
		zombie, zombieOwner, keysOf(owned), time.Since(paused).Round(time.Millisecond), audit.gaps(owned), held)
	woke := time.Now()
	if err := pc.signal(zombie, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.waitSettled(ctx, ids, 60*time.Second); err != nil {
		t.Fatalf("after SIGCONT of %s: %v", zombie, err)
	}
	// Each of the zombie's partition actors either tried to commit and was
	// fenced, or was stopped by the new assignment before it tried. That
	// none of its commits landed, the runtime audit checks below.
	var fenced, stopped []int
	for p := range owned {
		f := len(loggedFor(pc.logged(zombie, "fenced by another owner; stopping", woke), p)) > 0
		s := len(loggedFor(pc.logged(zombie, "partition actor stopped", woke), p)) > 0
		switch {
		case f:
			fenced = append(fenced, p)
		case s:
			stopped = append(stopped, p)
		default:
			t.Errorf("zombie %s logged neither a fence nor a stop of partition %d since it woke", zombie, p)
		}
	}
	slices.Sort(fenced)
	slices.Sort(stopped)
	t.Logf("zombie %s woke and rejoined: partitions %v fenced at commit, %v stopped by the assignment before committing", zombie, fenced, stopped)

	// 4. PostgreSQL crashes under load (an immediate shutdown: what was
	// not committed is lost) and restarts: every partition commits again.
	if err := audit.waitCommits(ctx, 30*time.Second, "a commit before the crash", allPartitions(partitions),
		func(_ int, u runtimeUpdate) bool { return u.at.After(woke) }); err != nil {
		t.Fatal(err)
	}
	crashed := time.Now()
	if err := pg.Crash(); err != nil {
		t.Fatal(err)
	}
	if err := pg.Restart(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	if err := audit.waitCommits(ctx, 30*time.Second, "a commit after PostgreSQL restarted", allPartitions(partitions),
		func(_ int, u runtimeUpdate) bool { return u.at.After(back) }); err != nil {
		t.Fatal(err)
	}
	unknown := 0 // commits cut off by the crash, resolved by reading the runtime row back
	for _, id := range ids {
		unknown += len(pc.logged(id, "commit outcome unknown; reading the runtime row back", crashed))
	}
	t.Logf("PostgreSQL crashed and restarted in %v; every partition committing again %v after the crash; outages per partition: %s; %d commits of unknown outcome read back",
		back.Sub(crashed).Round(time.Millisecond), time.Since(crashed).Round(time.Millisecond), audit.outages(crashed, partitions), unknown)
	if _, err := pc.waitSettled(ctx, ids, 30*time.Second); err != nil {
		t.Fatalf("after PostgreSQL restarted: %v", err)
	}

	// The bank's invariants, read through a node (from PostgreSQL).
	stopLoad()
	sum, err := load.waitTotals(ctx, ids[0], 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d transfers: %+v", load.sent(), sum)

	// The same in the state table itself, and the outbox emptied.
	stored, rows, err := storedBankTotals(ctx, audit.pool)
	switch {
	case err != nil:
		t.Fatal(err)
	case rows != len(load.accounts):
		t.Errorf("%d accounts in eddy_state_bank, %d funded", rows, len(load.accounts))
	case stored != sum:
		t.Errorf("eddy_state_bank adds up to %+v, the nodes answered %+v", stored, sum)
	case stored.Balance != load.deposited:
		t.Errorf("balances in eddy_state_bank add up to %d, deposited %d", stored.Balance, load.deposited)
	}
	if err := waitOutboxEmpty(ctx, audit.pool, 10*time.Second); err != nil {
		t.Error(err)
	}

	// The fencing invariants on every update of the runtime table.
	commits, claims, err := audit.check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("runtime audit: %d commits and %d claims, every commit at its partition's latest claim; whole test %v",
		commits, claims, time.Since(began).Round(time.Millisecond))
}

// runtimeAudit records, by a trigger on eddy_runtime, every update of the
// runtime rows of the bank's partitions: each commit (the offset moves) and
// each claim (the epoch or owner changes, the offset stays), with the
// committed_at that PostgreSQL stamped on it. A partition's updates are in
// its commit order: each holds the row's lock from its UPDATE, where the
// trigger takes the next id, to its COMMIT.
type runtimeAudit struct {
	pool  *pgxpool.Pool
	parts int
	seen  map[int][]runtimeUpdate // partition -> its updates read so far, by id
}

// runtimeUpdate is one update of a partition's runtime row.
type runtimeUpdate struct {
	id     int64
	kind   string // "start" (the row when the audit began), "claim" or "commit"
	epoch  uint64
	offset uint64
	owner  string
	at     time.Time // committed_at: when the row's last commit began, by the server's clock
}

// startRuntimeAudit installs the trigger on the runtime table, which the
// nodes created when their partitions started, and records each bank
// partition's row as it stands.
func startRuntimeAudit(t *testing.T, ctx context.Context, dsn string, parts int) *runtimeAudit {
	t.Helper()
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	// CREATE TRIGGER locks eddy_runtime against updates until COMMIT: no
	// update falls between the trigger and the rows recorded as "start".
	if _, err := tx.Exec(ctx, `
CREATE TABLE eddy_test_runtime_log (
	id           bigserial PRIMARY KEY,
	partition    integer NOT NULL,
	kind         text    NOT NULL,
	epoch        bigint  NOT NULL,
	"offset"     bigint  NOT NULL,
	owner        text    NOT NULL,
	committed_at timestamptz
);
CREATE INDEX ON eddy_test_runtime_log (partition, id);
CREATE FUNCTION eddy_test_log_runtime() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO eddy_test_runtime_log (partition, kind, epoch, "offset", owner, committed_at)
	VALUES (NEW.partition, CASE WHEN NEW."offset" = OLD."offset" THEN 'claim' ELSE 'commit' END,
		NEW.epoch, NEW."offset", NEW.owner, NEW.committed_at);
	RETURN NULL;
END $$;
CREATE TRIGGER eddy_test_log_runtime AFTER UPDATE ON eddy_runtime
	FOR EACH ROW WHEN (NEW.type = 'bank') EXECUTE FUNCTION eddy_test_log_runtime();
INSERT INTO eddy_test_runtime_log (partition, kind, epoch, "offset", owner, committed_at)
	SELECT partition, 'start', epoch, "offset", owner, committed_at FROM eddy_runtime WHERE type = 'bank' ORDER BY partition;`); err != nil {
		t.Fatalf("install the runtime audit: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	a := &runtimeAudit{pool: pool, parts: parts, seen: map[int][]runtimeUpdate{}}
	if err := a.read(ctx); err != nil {
		t.Fatal(err)
	}
	for p := range parts {
		// Commits after the audit's installation (the deposits' last
		// forwarded marks) are logged after the start row.
		if len(a.seen[p]) == 0 || a.seen[p][0].kind != "start" {
			t.Fatalf("partition %d has no runtime row, though it runs: %+v", p, a.seen[p])
		}
	}
	return a
}

// read adds the updates committed since the last read. Per partition it
// reads past the last id seen: an update of a partition with a higher id
// committed after the lower ones (ids of different partitions may commit
// out of order).
func (a *runtimeAudit) read(ctx context.Context) error {
	ps, lasts := make([]int32, a.parts), make([]int64, a.parts)
	for p := range a.parts {
		ps[p], lasts[p] = int32(p), -1
		if us := a.seen[p]; len(us) > 0 {
			lasts[p] = us[len(us)-1].id
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rows, err := a.pool.Query(ctx, `SELECT l.id, l.partition, l.kind, l.epoch, l."offset", l.owner, l.committed_at
FROM eddy_test_runtime_log l JOIN unnest($1::integer[], $2::bigint[]) AS s(p, last) ON l.partition = s.p AND l.id > s.last
ORDER BY l.id`, ps, lasts)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var u runtimeUpdate
		var p int
		var epoch, offset int64
		var at *time.Time
		if err := rows.Scan(&u.id, &p, &u.kind, &epoch, &offset, &u.owner, &at); err != nil {
			return err
		}
		u.epoch, u.offset = uint64(epoch), uint64(offset)
		if at != nil {
			u.at = *at
		}
		a.seen[p] = append(a.seen[p], u)
	}
	return rows.Err()
}

// waitCommits waits until each partition of parts has a commit for which
// ok holds, reading the audit every 20 ms (through PostgreSQL restarts).
func (a *runtimeAudit) waitCommits(ctx context.Context, timeout time.Duration, what string, parts []int, ok func(p int, u runtimeUpdate) bool) error {
	deadline := time.Now().Add(timeout)
	for {
		err := a.read(ctx)
		var waiting []string
		for _, p := range parts {
			if !slices.ContainsFunc(a.seen[p], func(u runtimeUpdate) bool { return u.kind == "commit" && ok(p, u) }) {
				last := a.seen[p][len(a.seen[p])-1]
				waiting = append(waiting, fmt.Sprintf("%d (last %s at epoch %d by %s, offset %d, committed at %s)",
					p, last.kind, last.epoch, last.owner, last.offset, last.at.Format("15:04:05.000")))
			}
		}
		if len(waiting) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v, no %s on partitions %s (last read: %v)", timeout, what, strings.Join(waiting, ", "), err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitMoved waits until each partition of moved (partition -> its epoch
// before the move) has committed at a newer epoch.
func (a *runtimeAudit) waitMoved(ctx context.Context, timeout time.Duration, moved map[int]uint64) error {
	return a.waitCommits(ctx, timeout, "commit at a newer epoch", keysOf(moved),
		func(p int, u runtimeUpdate) bool { return u.epoch > moved[p] })
}

// gaps says, for each partition of moved, how long it committed nothing
// across its move from its epoch in moved to a newer one: from the last
// commit at the old epoch (or before) to the first at a newer epoch, both
// as PostgreSQL stamped them. A claim changes the epoch and not the
// commit time, so it falls inside the gap.
func (a *runtimeAudit) gaps(moved map[int]uint64) string {
	var ds []time.Duration
	var each []string
	for _, p := range keysOf(moved) {
		var last time.Time
		for _, u := range a.seen[p] {
			if u.kind != "commit" && u.kind != "start" {
				continue
			}
			if u.epoch <= moved[p] {
				last = u.at
				continue
			}
			if !last.IsZero() {
				ds = append(ds, u.at.Sub(last))
				each = append(each, fmt.Sprintf("%d: %v", p, u.at.Sub(last).Round(time.Millisecond)))
			}
			break
		}
	}
	return fmt.Sprintf("p50 %v, max %v (%s)", percentile(ds, 50).Round(time.Millisecond), percentile(ds, 100).Round(time.Millisecond), strings.Join(each, ", "))
}

// outages says, for each partition, how long it committed nothing across
// a PostgreSQL crash at crashed: from its last commit before to its first
// after.
func (a *runtimeAudit) outages(crashed time.Time, parts int) string {
	var ds []time.Duration
	for p := range parts {
		var last time.Time
		for _, u := range a.seen[p] {
			if u.kind != "commit" && u.kind != "start" {
				continue
			}
			if !u.at.After(crashed) {
				last = u.at
				continue
			}
			if !last.IsZero() {
				ds = append(ds, u.at.Sub(last))
			}
			break
		}
	}
	return fmt.Sprintf("p50 %v, max %v", percentile(ds, 50).Round(time.Millisecond), percentile(ds, 100).Round(time.Millisecond))
}

// ownerOf is the owner of partition p's latest update read.
func (a *runtimeAudit) ownerOf(p int) string {
	us := a.seen[p]
	return us[len(us)-1].owner
}

// check reads the whole audit and checks, per partition in commit order,
// the fencing invariants of the external store: the epoch never goes down;
// a claim keeps the offset; every commit moves the offset forward and is
// at the epoch and by the owner of the partition's latest claim (so a
// fenced owner's commit never landed). It returns how many commits and
// claims there were.
func (a *runtimeAudit) check(ctx context.Context) (commits, claims int, err error) {
	if err := a.read(ctx); err != nil {
		return 0, 0, err
	}
	var errs []string
	for p := range a.parts {
		us := a.seen[p]
		claim, prev := us[0], us[0]
		for _, u := range us[1:] {
			switch {
			case u.epoch < prev.epoch:
				errs = append(errs, fmt.Sprintf("partition %d: epoch %d (%s by %s) after %d", p, u.epoch, u.kind, u.owner, prev.epoch))
			case u.kind == "claim":
				claims++
				claim = u
			case u.epoch != claim.epoch || u.owner != claim.owner:
				errs = append(errs, fmt.Sprintf("partition %d: commit of offset %d by %s at epoch %d, claimed last by %s at epoch %d",
					p, u.offset, u.owner, u.epoch, claim.owner, claim.epoch))
			case u.offset <= prev.offset:
				errs = append(errs, fmt.Sprintf("partition %d: commit of offset %d after %d", p, u.offset, prev.offset))
			default:
				commits++
			}
			prev = u
		}
	}
	if len(errs) > 0 {
		return commits, claims, fmt.Errorf("runtime audit: %s", strings.Join(errs[:min(len(errs), 20)], "; "))
	}
	return commits, claims, nil
}

// storedBankTotals sums the bank's accounts as eddy_state_bank holds them
// (msgpack values), and counts them.
func storedBankTotals(ctx context.Context, pool *pgxpool.Pool) (apps.Account, int, error) {
	var sum apps.Account
	rows, err := pool.Query(ctx, `SELECT key, value FROM eddy_state_bank WHERE store = 'state'`)
	if err != nil {
		return sum, 0, err
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var key, value []byte
		if err := rows.Scan(&key, &value); err != nil {
			return sum, n, err
		}
		var acc apps.Account
		if err := msgpack.Unmarshal(value, &acc); err != nil {
			return sum, n, fmt.Errorf("account %q: %w", key, err)
		}
		sum.Balance += acc.Balance
		sum.Deposited += acc.Deposited
		sum.Debits += acc.Debits
		sum.Credits += acc.Credits
		sum.Rejected += acc.Rejected
		n++
	}
	return sum, n, rows.Err()
}

// waitOutboxEmpty waits until the bank has no outbox row left: every
// credit forwarded and its mark committed.
func waitOutboxEmpty(ctx context.Context, pool *pgxpool.Pool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var n int64
		err := pool.QueryRow(ctx, `SELECT count(*) FROM eddy_outbox WHERE type = 'bank'`).Scan(&n)
		if err == nil && n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d outbox rows left %v after the load stopped and the totals were exact (err %v)", n, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// epochsOf maps the partitions active on node id ("": all of them) to
// their epochs.
func epochsOf(st eddy.ClusterStatus, id string) map[int]uint64 {
	out := map[int]uint64{}
	for _, p := range st.Partitions {
		if id == "" || p.Active == id {
			out[p.Partition] = p.Epoch
		}
	}
	return out
}

// loggedFor keeps the log lines about partition p: a partition actor's own
// (partition: p) or the node's (partition: "bank/p").
func loggedFor(lines []map[string]any, p int) []map[string]any {
	var out []map[string]any
	for _, l := range lines {
		if v := fmt.Sprint(l["partition"]); v == fmt.Sprint(p) || v == fmt.Sprintf("%s/%d", apps.BankType, p) {
			out = append(out, l)
		}
	}
	return out
}

func allPartitions(n int) []int {
	ps := make([]int, n)
	for p := range ps {
		ps[p] = p
	}
	return ps
}

func keysOf(m map[int]uint64) []int {
	return slices.Sorted(maps.Keys(m))
}
