package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/internal/natstest"
	"github.com/eddyrt/eddy/internal/testkit"
	"github.com/eddyrt/eddy/statestore"
)

// cl1 is the changelog identity of the snapshots env.upload makes.
var cl1 = []byte("cl-1")

// env is a snapshot bucket on a real embedded NATS server.
type env struct {
	t   *testing.T
	ctx context.Context
	js  jetstream.JetStream
	s   *Store
}

func newEnv(t *testing.T, cfg Config) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	_, js := natstest.Start(t).Connect(t)
	cfg.Logger = testkit.Logger(t)
	s, err := Open(ctx, js, "snaptest", cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, ctx: ctx, js: js, s: s}
}

// writeDir makes a directory holding files name -> content.
func writeDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func (e *env) upload(dir string, p int, seq uint64) (Manifest, UploadStats) {
	e.t.Helper()
	m, st, err := e.s.Upload(e.ctx, dir, Manifest{Partition: p, ChangelogSeq: seq, ChangelogID: cl1, Offset: seq / 2, Epoch: 1})
	if err != nil {
		e.t.Fatal(err)
	}
	return m, st
}

// fileObjects lists the file objects of partition p.
func (e *env) fileObjects(p int) []string {
	e.t.Helper()
	objs, err := e.s.objects(e.ctx, filePrefix(p))
	if err != nil {
		e.t.Fatal(err)
	}
	var names []string
	for n := range objs {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func readDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = string(b)
	}
	return out
}

// A second snapshot uploads only the files the first did not have: the
// unchanged ones are found by their sha256.
func TestSecondSnapshotUploadsOnlyNewFiles(t *testing.T) {
	e := newEnv(t, DefaultConfig())
	first := map[string]string{"000001.sst": strings.Repeat("a", 300<<10), "000002.sst": "bb", "MANIFEST-000001": "m1", "OPTIONS-000003": "o"}
	m1, st := e.upload(writeDir(t, first), 0, 10)
	if st.Files != 4 || st.Uploaded != 4 {
		t.Fatalf("first upload: %+v, want 4 of 4 files uploaded", st)
	}
	second := map[string]string{"000001.sst": first["000001.sst"], "000002.sst": "bb", "000007.sst": "new table", "MANIFEST-000001": "m2", "OPTIONS-000003": "o"}
	m2, st := e.upload(writeDir(t, second), 0, 20)
	if st.Files != 5 || st.Uploaded != 2 || st.UploadedBytes != int64(len("new table")+len("m2")) {
		t.Fatalf("second upload: %+v, want 2 of 5 files uploaded (the new table and the changed MANIFEST)", st)
	}
	ms, err := e.s.Manifests(e.ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].Name != m2.Name || ms[1].Name != m1.Name {
		t.Fatalf("manifests %v, want [%s %s]", ms, m2.Name, m1.Name)
	}
	got := ms[0]
	if got.Type != "snaptest" || got.Partition != 0 || got.ChangelogSeq != 20 || string(got.ChangelogID) != "cl-1" ||
		got.Offset != 10 || got.Epoch != 1 || got.StateVersion != 0 || len(got.Files) != 5 || got.Created.IsZero() {
		t.Fatalf("manifest %+v", got)
	}
	dir := filepath.Join(t.TempDir(), "restored")
	d, err := e.s.Download(e.ctx, 0, cl1, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d.Manifest.Name != m2.Name || len(d.Skipped) != 0 {
		t.Fatalf("downloaded %s (skipped %v), want %s", d.Manifest.Name, d.Skipped, m2.Name)
	}
	if got := readDir(t, dir); !mapsEqual(got, second) {
		t.Fatalf("restored files differ from the second checkpoint")
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// A real pebble checkpoint goes up and comes back as a store with the same
// data and Meta.
func TestPebbleCheckpointRoundTrip(t *testing.T) {
	e := newEnv(t, DefaultConfig())
	st, err := statestore.OpenPebble(statestore.DefaultConfig(filepath.Join(t.TempDir(), "store")))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	b := st.NewBatch()
	for i := range 5000 {
		b.Set(fmt.Appendf(nil, "key%05d", i), fmt.Appendf(nil, "value%d", i))
	}
	b.SetMeta(statestore.Meta{Offset: 5000, ChangelogSeq: 5001, Epoch: 3})
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(t.TempDir(), "cp")
	if err := st.Checkpoint(cp); err != nil {
		t.Fatal(err)
	}
	e.upload(cp, 3, 5001)

	dl := filepath.Join(t.TempDir(), "dl")
	if _, err := e.s.Download(e.ctx, 3, cl1, dl, nil); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "stores", "3")
	if err := statestore.Install(dl, dir); err != nil {
		t.Fatal(err)
	}
	r, err := statestore.OpenPebble(statestore.DefaultConfig(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if m, _ := r.Meta(); m != (statestore.Meta{Offset: 5000, ChangelogSeq: 5001, Epoch: 3}) {
		t.Fatalf("restored meta %+v", m)
	}
	n := 0
	if err := r.Iterate(nil, func(k, v []byte) error { n++; return nil }); err != nil || n != 5000 {
		t.Fatalf("restored store: %d keys, %v", n, err)
	}
	for _, i := range []int{0, 1234, 4999} {
		if v, err := r.Get(fmt.Appendf(nil, "key%05d", i)); err != nil || string(v) != fmt.Sprintf("value%d", i) {
			t.Fatalf("key%05d = %q, %v", i, v, err)
		}
	}
}

// An upload that fails midway (its context cancelled after the first file)
// leaves no manifest; its files stay through the grace period and Prune
// removes them after it.
func TestFailedUploadLeavesNoManifestAndPruneRemovesItsFiles(t *testing.T) {
	cfg := DefaultConfig()
	cfg.GCGrace = time.Hour
	e := newEnv(t, cfg)
	kept, _ := e.upload(writeDir(t, map[string]string{"a": "kept", "MANIFEST": "m0"}), 0, 5)

	ctx, cancel := context.WithCancel(e.ctx)
	afterFile = cancel
	t.Cleanup(func() { afterFile = nil })
	_, st, err := e.s.Upload(ctx, writeDir(t, map[string]string{"a": "kept", "b": "orphan 1", "c": "orphan 2", "d": "orphan 3"}), Manifest{Partition: 0, ChangelogSeq: 9, ChangelogID: cl1})
	afterFile = nil
	if err == nil {
		t.Fatal("upload with a cancelled context succeeded")
	}
	if st.Uploaded != 1 {
		t.Fatalf("uploaded %d files before the cancel, want 1", st.Uploaded)
	}
	ms, err := e.s.Manifests(e.ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].Name != kept.Name {
		t.Fatalf("manifests after a failed upload: %v, want only %s", ms, kept.Name)
	}
	if got := len(e.fileObjects(0)); got != 3 {
		t.Fatalf("%d files, want 3 (2 kept, 1 orphan)", got)
	}

	// Within the grace period the orphan may be an upload under way: kept.
	if st, err := e.s.Prune(e.ctx, 0, cl1); err != nil || st.Files != 0 {
		t.Fatalf("prune within the grace period: %+v, %v", st, err)
	}
	e.s.cfg.GCGrace = 0
	st2, err := e.s.Prune(e.ctx, 0, cl1)
	if err != nil {
		t.Fatal(err)
	}
	if st2.Files != 1 || st2.Manifests != 0 {
		t.Fatalf("prune: %+v, want the orphan file removed", st2)
	}
	if got := len(e.fileObjects(0)); got != 2 {
		t.Fatalf("%d files after prune, want the kept snapshot's 2", got)
	}
	if _, err := e.s.Download(e.ctx, 0, cl1, filepath.Join(t.TempDir(), "r"), nil); err != nil {
		t.Fatalf("the kept snapshot after prune: %v", err)
	}
}

// A corrupt or missing file of the newest snapshot makes Download fall
// back to the previous one, as does a snapshot the caller does not accept;
// with none left, ErrNoSnapshot and no directory.
func TestDownloadFallsBackToThePreviousSnapshot(t *testing.T) {
	e := newEnv(t, DefaultConfig())
	oldFiles := map[string]string{"t1": "table one", "MANIFEST": "old"}
	old, _ := e.upload(writeDir(t, oldFiles), 1, 100)
	newest, _ := e.upload(writeDir(t, map[string]string{"t1": "table one", "t2": "table two", "MANIFEST": "new"}), 1, 200)

	// Corrupt t2 in the bucket: other bytes under its name.
	var t2 File
	for _, f := range newest.Files {
		if f.Name == "t2" {
			t2 = f
		}
	}
	if _, err := e.s.obs.PutString(e.ctx, fileObject(1, t2.SHA256), "table TWO"); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "r")
	d, err := e.s.Download(e.ctx, 1, cl1, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d.Manifest.Name != old.Name || len(d.Skipped) != 1 || !errors.Is(d.Skipped[0], ErrCorrupt) {
		t.Fatalf("downloaded %s, skipped %v; want %s after skipping a corrupt one", d.Manifest.Name, d.Skipped, old.Name)
	}
	if got := readDir(t, dir); !mapsEqual(got, oldFiles) {
		t.Fatalf("restored %v, want the older snapshot's files", got)
	}

	// A missing file: the same.
	if err := e.s.obs.Delete(e.ctx, fileObject(1, t2.SHA256)); err != nil {
		t.Fatal(err)
	}
	d, err = e.s.Download(e.ctx, 1, cl1, filepath.Join(t.TempDir(), "r2"), nil)
	if err != nil || d.Manifest.Name != old.Name {
		t.Fatalf("with a missing file: downloaded %s, %v", d.Manifest.Name, err)
	}

	// Not accepted (another changelog's), then nothing left.
	errOther := errors.New("another changelog")
	dir3 := filepath.Join(t.TempDir(), "r3")
	_, err = e.s.Download(e.ctx, 1, cl1, dir3, func(m Manifest) error {
		if m.Name == old.Name {
			return errOther
		}
		return nil
	})
	if !errors.Is(err, ErrNoSnapshot) || !errors.Is(err, errOther) || !errors.Is(err, ErrCorrupt) && !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Fatalf("with no usable snapshot: %v", err)
	}
	if _, err := os.Stat(dir3); !os.IsNotExist(err) {
		t.Fatalf("a failed download left its directory: %v", err)
	}
	if _, err := e.s.Download(e.ctx, 7, cl1, filepath.Join(t.TempDir(), "r4"), nil); !errors.Is(err, ErrNoSnapshot) {
		t.Fatalf("partition without snapshots: %v", err)
	}
}

// Prune keeps the newest Keep manifests of a partition and the files they
// reference, and touches no other partition.
func TestPruneKeepsTheNewestManifests(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Keep, cfg.GCGrace = 2, 0
	e := newEnv(t, cfg)
	var ms []Manifest
	for i := range 4 {
		m, _ := e.upload(writeDir(t, map[string]string{"shared": "same", fmt.Sprintf("t%d", i): fmt.Sprintf("table %d", i)}), 0, uint64(10*(i+1)))
		ms = append(ms, m)
	}
	other, _ := e.upload(writeDir(t, map[string]string{"shared": "same", "x": "other partition"}), 1, 5)
	if got := len(e.fileObjects(0)); got != 5 {
		t.Fatalf("%d files before prune, want 5", got)
	}
	st, err := e.s.Prune(e.ctx, 0, cl1)
	if err != nil {
		t.Fatal(err)
	}
	if st.Manifests != 2 || st.Files != 2 {
		t.Fatalf("prune: %+v, want 2 manifests and their 2 own files removed", st)
	}
	left, err := e.s.Manifests(e.ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 2 || left[0].Name != ms[3].Name || left[1].Name != ms[2].Name {
		t.Fatalf("manifests left %v, want the newest two", left)
	}
	if got := len(e.fileObjects(0)); got != 3 {
		t.Fatalf("%d files after prune, want 3 (shared, t2, t3)", got)
	}
	for _, m := range left {
		if _, err := e.s.Download(e.ctx, 0, cl1, filepath.Join(t.TempDir(), "r"), func(x Manifest) error {
			if x.Name != m.Name {
				return errors.New("not this one")
			}
			return nil
		}); err != nil {
			t.Fatalf("kept snapshot %s: %v", m.Name, err)
		}
	}
	if o, err := e.s.Manifests(e.ctx, 1); err != nil || len(o) != 1 || o[0].Name != other.Name || len(e.fileObjects(1)) != 2 {
		t.Fatalf("partition 1 was touched: %v %v", o, err)
	}
}

// Snapshots of an earlier changelog of the same name (deleted and created
// again, so its sequences restart) are never downloaded for the new one,
// however high their sequence, and Prune deletes them once the new
// changelog has a newer snapshot.
func TestSnapshotsOfAnotherChangelog(t *testing.T) {
	cfg := DefaultConfig()
	cfg.GCGrace = 0
	e := newEnv(t, cfg)
	old := []byte("cl-old")
	up := func(id []byte, seq uint64, content string) Manifest {
		m, _, err := e.s.Upload(e.ctx, writeDir(t, map[string]string{"f": content}), Manifest{Partition: 0, ChangelogSeq: seq, ChangelogID: id})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	up(old, 5000, "old")
	if _, err := e.s.Download(e.ctx, 0, cl1, filepath.Join(t.TempDir(), "r"), nil); !errors.Is(err, ErrNoSnapshot) {
		t.Fatalf("download for a changelog without snapshots: %v", err)
	}
	up(cl1, 10, "new 10")
	want := up(cl1, 20, "new 20")
	d, err := e.s.Download(e.ctx, 0, cl1, filepath.Join(t.TempDir(), "r2"), nil)
	if err != nil || d.Manifest.Name != want.Name {
		t.Fatalf("downloaded %s, %v; want %s", d.Manifest.Name, err, want.Name)
	}
	st, err := e.s.Prune(e.ctx, 0, cl1)
	if err != nil {
		t.Fatal(err)
	}
	if st.Manifests != 1 || st.Files != 1 {
		t.Fatalf("prune %+v, want the old changelog's manifest and file removed", st)
	}
	ms, err := e.s.Manifests(e.ctx, 0)
	if err != nil || len(ms) != 2 || ms[0].Name != want.Name {
		t.Fatalf("manifests %v, %v", ms, err)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	bad := Config{Replicas: 0, Keep: 0, GCGrace: -1}
	err := bad.Validate()
	if err == nil || !strings.Contains(err.Error(), "Replicas") || !strings.Contains(err.Error(), "Keep") || !strings.Contains(err.Error(), "GCGrace") {
		t.Fatalf("validate: %v", err)
	}
}
