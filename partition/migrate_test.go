package partition

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/internal/testkit"
	"github.com/eddyrt/eddy/statestore"
)

// account is the state of the migration tests: version 1 has N, version 2
// adds Tier with a default ("basic") and counts the migrations a value went
// through in Migrated, so a value migrated twice shows it.
type account struct {
	N        uint64 `json:"n"`
	Tier     string `json:"tier,omitempty"`
	Migrated int    `json:"migrated,omitempty"`
}

// accountHandler counts events per key in the default store and mirrors the
// count into the "aux" store; at version 2 it requires the new field (an
// unmigrated value fails the event for good: it would go to the dead-letter
// stream and the count would be short).
func accountHandler(version int) Handler {
	return func(tx *Txn) error {
		key := []byte(tx.Event().Key)
		var acc account
		v, err := tx.Get(DefaultStore, key)
		switch {
		case err == nil:
			if err := json.Unmarshal(v, &acc); err != nil {
				return fmt.Errorf("decode: %v: %w", err, ErrPermanent)
			}
			if version >= 2 && acc.Tier == "" {
				return fmt.Errorf("unmigrated value %s: %w", v, ErrPermanent)
			}
		case !errors.Is(err, statestore.ErrNotFound):
			return err
		case version >= 2:
			acc.Tier = "basic"
		}
		acc.N++
		b, _ := json.Marshal(acc)
		if err := tx.Set(DefaultStore, key, b); err != nil {
			return err
		}
		return tx.Set("aux", key, b)
	}
}

// migrationCounter is a Migrate from version 1 to 2 that counts its
// successful calls per store key, and fails once for the keys in failOnce.
type migrationCounter struct {
	mu       sync.Mutex
	calls    map[string]int // successful calls
	failOnce map[string]bool
}

func (m *migrationCounter) migrate(store string, key []byte, from int, value []byte) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := store + "/" + string(key)
	if m.failOnce[k] {
		delete(m.failOnce, k)
		return nil, errors.New("injected migration failure")
	}
	if from != 1 {
		return nil, fmt.Errorf("migrate from %d", from)
	}
	var acc account
	if err := json.Unmarshal(value, &acc); err != nil {
		return nil, err
	}
	acc.Tier = "basic"
	acc.Migrated++
	m.calls[k]++
	return json.Marshal(acc)
}

// seedVersion1 runs version 1 of the account handler over events spread on
// keys keys, and returns the model: the count of each key.
func seedVersion1(t *testing.T, h *harness, cfg Config, keys, events int) map[string]uint64 {
	t.Helper()
	a := h.start(cfg)
	model := map[string]uint64{}
	for i := range events {
		k := "k" + strconv.Itoa(i%keys)
		h.publish(k, nil)
		model[k]++
	}
	h.waitOffset(a, 0)
	if err := a.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	return model
}

// checkAccounts compares every key's state in both stores with the model,
// and checks that each value was migrated exactly once.
func checkAccounts(t *testing.T, h *harness, get func(store, key string) ([]byte, error), model map[string]uint64) {
	t.Helper()
	for k, n := range model {
		for _, store := range []string{DefaultStore, "aux"} {
			v, err := get(store, k)
			if err != nil {
				t.Fatalf("%s/%s: %v", store, k, err)
			}
			var acc account
			if err := json.Unmarshal(v, &acc); err != nil {
				t.Fatal(err)
			}
			if acc.N != n || acc.Tier != "basic" || acc.Migrated != 1 {
				t.Errorf("%s/%s = %+v, want n=%d, tier basic, migrated once", store, k, acc, n)
			}
		}
	}
}

// A compatible change (a new field with a default) keeps the state: version
// 2 migrates every value of every store once, in batches within the atomic
// batch limit, before it processes input, and a hot replica of version 2
// holds the migrated values by applying the records.
func TestMigrateKeepsStateAndAddsField(t *testing.T) {
	h := newHarness(t, "ver_migrate", 1)
	cl := changelog.NewSubjects("ver_migrate", 0)
	const keys = 30
	v1 := h.config(0, accountHandler(1))
	v1.Stores = []string{"aux"}
	v1.MaxBatchRecords = 7 // 6 values a migration batch: several batches
	model := seedVersion1(t, h, v1, keys, 90)

	mc := &migrationCounter{calls: map[string]int{}}
	v2 := v1
	v2.Handler, v2.StateVersion, v2.Migrate = accountHandler(2), 2, mc.migrate
	rcfg := v2
	rcfg.StoreDir += "-replica"
	r, err := StartReplica(h.sys, rcfg, testSupervisor())
	if err != nil {
		t.Fatal(err)
	}
	a := h.start(v2)
	h.waitRunning(a)
	if m, _, err := lastMeta(h.ctx, h.js, cl); err != nil || m.Version != 2 || m.Migrating != 0 || m.MigratedThrough != "" {
		t.Fatalf("newest meta record %+v (%v): want version 2, no migration in progress", m, err)
	}
	for i := range 20 {
		k := "k" + strconv.Itoa(i%keys)
		h.publish(k, nil)
		model[k]++
	}
	h.publish("new", nil) // a key born at version 2
	h.waitOffset(a, 0)
	if len(mc.calls) != 2*keys {
		t.Fatalf("Migrate ran for %d values, want %d", len(mc.calls), 2*keys)
	}
	for k, n := range mc.calls {
		if n != 1 {
			t.Errorf("Migrate ran %d times for %s", n, k)
		}
	}
	checkAccounts(t, h, func(store, key string) ([]byte, error) { return a.Get(h.ctx, store, []byte(key)) }, model)
	if dl := streamMsgs(t, h.ctx, h.js, DLQStream("ver_migrate")); len(dl) != 0 {
		t.Fatalf("%d dead letters: an event met an unmigrated value", len(dl))
	}

	last := lastSeq(t, h, cl)
	testkit.WaitFor(t, waitTimeout, "replica to catch up", func() bool { return r.Lag().Applied >= last })
	checkAccounts(t, h, func(store, key string) ([]byte, error) {
		v, _, err := r.Get(h.ctx, store, []byte(key))
		return v, err
	}, model)
}

// A migration interrupted in the middle — by an error after a batch, by a
// crash between a batch's changelog commit and its local commit, and by a
// Migrate that fails once — resumes after the last key committed: every
// value is migrated exactly once, and the state then equals the model.
func TestMigrationResumesExactlyOnce(t *testing.T) {
	h := newHarness(t, "ver_resume", 1)
	const keys = 40
	v1 := h.config(0, accountHandler(1))
	v1.Stores = []string{"aux"}
	v1.MaxBatchRecords = 6 // 5 values a migration batch: 16 batches
	model := seedVersion1(t, h, v1, keys, 120)

	// Keys sort as "aux\x00k0", "aux\x00k1", "aux\x00k10", ... then "state\x00...".
	mc := &migrationCounter{calls: map[string]int{}, failOnce: map[string]bool{"state/k17": true}}
	var (
		mu        sync.Mutex
		batches   int
		commits   int
		crashed   bool
		failedOne bool
	)
	v2 := v1
	v2.Handler, v2.StateVersion, v2.Migrate = accountHandler(2), 2, mc.migrate
	v2.Hooks.AfterMigrateBatch = func([]byte) error {
		mu.Lock()
		defer mu.Unlock()
		batches++
		if batches == 2 && !failedOne {
			failedOne = true
			return errors.New("injected failure after a migration batch")
		}
		return nil
	}
	v2.Hooks.AfterChangelog = func() {
		mu.Lock()
		commits++
		crash := !crashed && failedOne && commits > 8
		if crash {
			crashed = true
		}
		mu.Unlock()
		if crash {
			// The batch is in the changelog, not in the local store: the
			// restart restores it from the changelog's tail.
			panic("injected crash between the changelog and the local commit")
		}
	}
	a := h.start(v2)
	h.waitRunning(a)
	mu.Lock()
	if !crashed || !failedOne || mc.failOnce["state/k17"] {
		t.Fatalf("not every fault was injected: crashed %v, failed after a batch %v, Migrate failed %v", crashed, failedOne, !mc.failOnce["state/k17"])
	}
	mu.Unlock()
	if a.Restarts() < 3 {
		t.Fatalf("%d restarts, want 3 (one per fault)", a.Restarts())
	}
	for i := range 20 {
		k := "k" + strconv.Itoa(i%keys)
		h.publish(k, nil)
		model[k]++
	}
	h.waitOffset(a, 0)
	if len(mc.calls) != 2*keys {
		t.Fatalf("Migrate ran for %d values, want %d", len(mc.calls), 2*keys)
	}
	for k, n := range mc.calls {
		if n != 1 {
			t.Errorf("Migrate ran %d times for %s", n, k)
		}
	}
	checkAccounts(t, h, func(store, key string) ([]byte, error) { return a.Get(h.ctx, store, []byte(key)) }, model)

	// A full restore from the changelog (a new node) gives the same state.
	fresh := v2
	fresh.StoreDir += "-fresh"
	fresh.Hooks = Hooks{}
	if err := a.Stop(h.ctx); err != nil {
		t.Fatal(err)
	}
	b := h.start(fresh)
	h.waitRunning(b)
	checkAccounts(t, h, func(store, key string) ([]byte, error) { return b.Get(h.ctx, store, []byte(key)) }, model)
	if len(mc.calls) != 2*keys {
		t.Fatalf("a restore of migrated state ran Migrate again: %d values", len(mc.calls))
	}
}

// A failover in the middle of a migration: the old owner stalls after a
// migration batch, its hot replica (which applied the batches like any
// others) is promoted at a newer epoch and resumes the migration after the
// last key committed; the old owner, woken up, is fenced at its next
// commit. Every value in the state is migrated exactly once.
func TestMigrationResumesOnPromotedReplica(t *testing.T) {
	h := newHarness(t, "ver_failover", 1)
	cl := changelog.NewSubjects("ver_failover", 0)
	const keys = 30
	v1 := h.config(0, accountHandler(1))
	v1.Stores = []string{"aux"}
	v1.MaxBatchRecords = 6
	model := seedVersion1(t, h, v1, keys, 60)

	mc := &migrationCounter{calls: map[string]int{}}
	v2 := v1
	v2.Handler, v2.StateVersion, v2.Migrate = accountHandler(2), 2, mc.migrate
	rcfg := v2
	rcfg.StoreDir += "-replica"
	r, err := StartReplica(h.sys, rcfg, testSupervisor())
	if err != nil {
		t.Fatal(err)
	}
	stalled, wake := make(chan struct{}), make(chan struct{})
	var once sync.Once
	old := v2
	old.Owner = "old-owner"
	old.Hooks.AfterMigrateBatch = func([]byte) error {
		once.Do(func() { close(stalled); <-wake })
		return nil
	}
	a := h.start(old)
	<-stalled // one migration batch committed, the owner is stuck
	m, _, err := lastMeta(h.ctx, h.js, cl)
	if err != nil || m.Migrating != 2 || m.MigratedThrough == "" {
		t.Fatalf("newest meta record %+v (%v): want a migration to 2 in progress", m, err)
	}
	last := lastSeq(t, h, cl)
	testkit.WaitFor(t, waitTimeout, "replica to apply the migration batch", func() bool { return r.Lag().Applied >= last })

	hand, err := r.Handoff(h.ctx, last)
	if err != nil {
		t.Fatal(err)
	}
	promoted := v2
	promoted.Owner, promoted.Epoch, promoted.Handoff = "new-owner", 10, hand
	b := h.start(promoted)
	h.waitRunning(b)
	close(wake)
	testkit.WaitFor(t, waitTimeout, "the old owner to be fenced", func() bool {
		select {
		case <-a.Done():
			return true
		default:
			return false
		}
	})
	if !errors.Is(a.Err(), ErrFenced) {
		t.Fatalf("old owner stopped with %v, want ErrFenced", a.Err())
	}
	for i := range 10 {
		k := "k" + strconv.Itoa(i%keys)
		h.publish(k, nil)
		model[k]++
	}
	h.waitOffset(b, 0)
	// The old owner migrated the batch after its stall again, but could not
	// commit it: the values say how often a committed migration touched them.
	checkAccounts(t, h, func(store, key string) ([]byte, error) { return b.Get(h.ctx, store, []byte(key)) }, model)
	if m, _, err := lastMeta(h.ctx, h.js, cl); err != nil || m.Version != 2 || m.Migrating != 0 || m.Owner != "new-owner" {
		t.Fatalf("newest meta record %+v (%v): want version 2 by new-owner", m, err)
	}
}
