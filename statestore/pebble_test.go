package statestore

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestPebbleSurvivesReopen(t *testing.T) {
	cfg := testConfig(t)
	s, err := OpenPebble(cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := Meta{Offset: 1000, ChangelogSeq: 1234, Epoch: 2}
	b := s.NewBatch()
	for i := range 1000 {
		b.Set(fmt.Appendf(nil, "key/%04d", i), fmt.Appendf(nil, "value %d", i))
	}
	b.SetMeta(want)
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	mustSet(t, s, "single", "write")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openTestPebble(t, cfg)
	if m, err := s.Meta(); err != nil || m != want {
		t.Fatalf("meta after reopen = %+v, %v; want %+v", m, err, want)
	}
	if got := len(collect(t, s, "key/")); got != 1000 {
		t.Fatalf("%d keys after reopen, want 1000", got)
	}
	if got := mustGet(t, s, "key/0999"); got != "value 999" {
		t.Fatalf("key/0999 = %q", got)
	}
	if got := mustGet(t, s, "single"); got != "write" {
		t.Fatalf("single = %q", got)
	}
}

func TestPebbleSharedCache(t *testing.T) {
	cache := NewCache(8 << 20)
	var stores []*Pebble
	for range 2 {
		cfg := testConfig(t)
		cfg.Cache = cache
		cfg.CacheSize = -1 // ignored, but Validate checks it
		if err := cfg.Validate(); err == nil {
			t.Fatal("negative CacheSize passed Validate")
		}
		cfg.CacheSize = 0
		stores = append(stores, openTestPebble(t, cfg))
	}
	// The stores hold their own references: the creator may let go now.
	cache.Close()
	cache.Close()

	for i, s := range stores {
		b := s.NewBatch()
		for k := range 2000 {
			b.Set(fmt.Appendf(nil, "k%05d", k), fmt.Appendf(nil, "store %d", i))
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	for i, s := range stores {
		if got, want := mustGet(t, s, "k01999"), fmt.Sprintf("store %d", i); got != want {
			t.Fatalf("store %d: %q, want %q", i, got, want)
		}
	}
	if err := stores[0].Close(); err != nil {
		t.Fatal(err)
	}
	// The other store still works on the shared cache.
	if got := mustGet(t, stores[1], "k00000"); got != "store 1" {
		t.Fatalf("store 1 after store 0 closed: %q", got)
	}

	cfg := testConfig(t)
	cfg.Cache = cache
	if _, err := OpenPebble(cfg); err == nil || !strings.Contains(err.Error(), "Cache is closed") {
		t.Fatalf("open with a closed cache: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig("/tmp/x").Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	if err := (Config{Dir: "d"}).Validate(); err != nil {
		t.Fatalf("zero sizes mean defaults: %v", err)
	}
	for name, c := range map[string]Config{
		"no dir":           {},
		"negative cache":   {Dir: "d", CacheSize: -1},
		"tiny memtable":    {Dir: "d", MemTableSize: 1024},
		"memtable too big": {Dir: "d", MemTableSize: 4 << 30},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate passed", name)
		}
	}
	if _, err := OpenPebble(Config{}); err == nil {
		t.Fatal("OpenPebble accepted an invalid config")
	}
}

func TestPebbleSync(t *testing.T) {
	cfg := testConfig(t)
	cfg.Sync = true
	s := openTestPebble(t, cfg)
	b := s.NewBatch()
	b.Set([]byte("a"), []byte("1"))
	b.SetMeta(Meta{Offset: 1})
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, s, "a"); got != "1" {
		t.Fatalf("a = %q", got)
	}
}

func TestPebbleCheckpoint(t *testing.T) {
	s := openTestPebble(t, testConfig(t))
	b := s.NewBatch()
	b.Set([]byte("a"), []byte("1"))
	b.SetMeta(Meta{Offset: 5, ChangelogSeq: 6, Epoch: 1})
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(t.TempDir(), "checkpoint")
	if err := s.Checkpoint(dest); err != nil {
		t.Fatal(err)
	}
	mustSet(t, s, "b", "after the checkpoint")

	cfg := testConfig(t)
	cfg.Dir = dest
	c := openTestPebble(t, cfg)
	if got := mustGet(t, c, "a"); got != "1" {
		t.Fatalf("a in checkpoint = %q", got)
	}
	if _, err := c.Get([]byte("b")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a write after the checkpoint is in it: %v", err)
	}
	if m, _ := c.Meta(); m != (Meta{Offset: 5, ChangelogSeq: 6, Epoch: 1}) {
		t.Fatalf("checkpoint meta = %+v", m)
	}
}

var bigKeys = flag.Int("statestore.keys", 0,
	"load this many keys into a pebble store and check the Go heap stays bounded (e.g. 10000000)")

// TestPebbleManyKeysStayOnDisk loads -statestore.keys keys through batches and
// checks that the Go heap does not grow with them: the data lives on disk and
// in the block cache, which is allocated outside the Go heap with cgo.
func TestPebbleManyKeysStayOnDisk(t *testing.T) {
	n := *bigKeys
	if n == 0 {
		t.Skip("set -statestore.keys=10000000 to run")
	}
	s := openTestPebble(t, testConfig(t))
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	start := time.Now()
	value := make([]byte, 100)
	key := make([]byte, 0, 16)
	const batchSize = 1000
	for i := 0; i < n; i += batchSize {
		b := s.NewBatch()
		for j := i; j < i+batchSize && j < n; j++ {
			key = fmt.Appendf(key[:0], "key/%010d", j)
			b.Set(key, value)
		}
		b.SetMeta(Meta{Offset: uint64(i + batchSize)})
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	load := time.Since(start)
	after := heap()

	start = time.Now()
	const gets = 200_000
	for range gets {
		key = fmt.Appendf(key[:0], "key/%010d", rand.IntN(n))
		if _, err := s.Get(key); err != nil {
			t.Fatal(err)
		}
	}
	getTime := time.Since(start)
	afterGets := heap()
	t.Logf("%d keys loaded in %v (%.0f k/s); %d random gets at %.0f k/s; Go heap %d MiB -> %d MiB -> %d MiB",
		n, load.Round(time.Millisecond), float64(n)/load.Seconds()/1e3,
		gets, float64(gets)/getTime.Seconds()/1e3, before>>20, after>>20, afterGets>>20)
	if limit := before + 64<<20; after > limit || afterGets > limit {
		t.Fatalf("Go heap grew with the data: %d MiB -> %d MiB -> %d MiB", before>>20, after>>20, afterGets>>20)
	}
}

// A checkpoint holds every committed batch, even one not synced to the WAL
// (Config.Sync off): the checkpoint flushes the WAL first.
func TestPebbleCheckpointHoldsUnsyncedWrites(t *testing.T) {
	cfg := testConfig(t)
	cfg.Sync = false
	s := openTestPebble(t, cfg)
	for i := range 100 {
		b := s.NewBatch()
		b.Set(fmt.Appendf(nil, "k%03d", i), []byte("v"))
		b.SetMeta(Meta{Offset: uint64(i + 1), ChangelogSeq: uint64(2 * (i + 1))})
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	dest := filepath.Join(t.TempDir(), "checkpoint")
	if err := s.Checkpoint(dest); err != nil {
		t.Fatal(err)
	}
	if err := s.Checkpoint(dest); err == nil {
		t.Fatal("a checkpoint into an existing directory succeeded")
	}
	ccfg := testConfig(t)
	ccfg.Dir = dest
	c := openTestPebble(t, ccfg)
	if got := len(collect(t, c, "k")); got != 100 {
		t.Fatalf("checkpoint holds %d keys, want 100", got)
	}
	if m, _ := c.Meta(); m.Offset != 100 || m.ChangelogSeq != 200 {
		t.Fatalf("checkpoint meta = %+v", m)
	}
}

// Install puts a checkpoint in the place of a store directory, which then
// opens with the checkpoint's data and Meta and nothing of what was there.
func TestInstallCheckpoint(t *testing.T) {
	s := openTestPebble(t, testConfig(t))
	b := s.NewBatch()
	b.Set([]byte("a"), []byte("1"))
	b.SetMeta(Meta{Offset: 3, ChangelogSeq: 4, Epoch: 2})
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "restored")
	if err := s.Checkpoint(src); err != nil {
		t.Fatal(err)
	}

	// The store it replaces holds other data.
	dir := filepath.Join(t.TempDir(), "stores", "t", "0")
	old, err := OpenPebble(DefaultConfig(dir))
	if err != nil {
		t.Fatal(err)
	}
	mustSet(t, old, "stale", "x")
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}

	if err := Install(t.TempDir(), dir); !errors.Is(err, ErrNotCheckpoint) {
		t.Fatalf("install of an empty dir: %v, want ErrNotCheckpoint", err)
	}
	if err := Install(src, dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(src); !os.IsNotExist(err) {
		t.Fatalf("source still there after install: %v", err)
	}
	cfg := testConfig(t)
	cfg.Dir = dir
	r := openTestPebble(t, cfg)
	if got := mustGet(t, r, "a"); got != "1" {
		t.Fatalf("a = %q", got)
	}
	if _, err := r.Get([]byte("stale")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the replaced store's key survived: %v", err)
	}
	if m, _ := r.Meta(); m != (Meta{Offset: 3, ChangelogSeq: 4, Epoch: 2}) {
		t.Fatalf("meta = %+v", m)
	}
}
