package partition

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/actor"
	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/snapshot"
	"github.com/eddyrt/eddy/statestore"
)

// Restore paths, the values of the path label of eddy_partition_restores_total
// and of the restore_path of the "partition started" log line.
const (
	restoreLocal     = "local"     // the local store + the changelog tail
	restoreReplica   = "replica"   // a promoted hot replica's store
	restoreSnapshot  = "snapshot"  // a snapshot + the changelog tail past it
	restoreChangelog = "changelog" // the whole changelog
	restoreInput     = "input"     // stores without a changelog, rebuilt from the input stream
	restoreExternal  = "external"  // an external store: claimed, nothing to restore
)

// SnapshotStatus is the newest snapshot a partition actor uploaded, or
// restored from.
type SnapshotStatus struct {
	// ChangelogSeq and Offset are where the snapshot's store stood.
	ChangelogSeq uint64 `json:"changelog_seq"`
	Offset       uint64 `json:"offset"`
	// Created is when it was uploaded.
	Created time.Time `json:"created"`
	// Files and Bytes are the snapshot's; Uploaded the bytes this upload
	// stored (the rest were in the bucket already).
	Files    int   `json:"files"`
	Bytes    int64 `json:"bytes"`
	Uploaded int64 `json:"uploaded_bytes"`
	// Restored says the actor restored from this snapshot rather than
	// uploading it.
	Restored bool `json:"restored,omitempty"`
}

// checkpointer is a store that can write a checkpoint of itself
// (statestore.Pebble).
type checkpointer interface {
	Checkpoint(dir string) error
}

// snapshots is the partition actor's side of snapshotting: what triggers
// the next snapshot, and the one upload that may run, in a goroutine the
// actor owns (stopped and waited for in Stopped).
type snapshots struct {
	lastSeq  uint64    // changelog sequence of the last snapshot taken (or restored, or of the start)
	records  uint64    // changelog records committed since (or replayed, after a whole-changelog restore)
	lastAt   time.Time // when it was taken
	timer    *time.Timer
	busy     atomic.Bool // an upload runs
	wg       sync.WaitGroup
	cancel   context.CancelFunc
	cur      *uploadDone     // the upload running, or the last one
	bucket   *snapshot.Store // opened by the first upload
	bucketMu sync.Mutex      // bucket: uploads run one at a time, but on different goroutines
}

// snapshotTick asks the actor to check whether a snapshot is due
// (Config.SnapshotInterval).
type snapshotTick struct{ from *partitionActor }

// snapshotNow asks the actor for a snapshot now (Actor.Snapshot).
type snapshotNow struct{}

// uploadDone is one upload's outcome: done is closed once res is set.
type uploadDone struct {
	done chan struct{}
	res  snapshotDone
}

// snapshotDone reports an upload's outcome to the actor.
type snapshotDone struct {
	from *partitionActor
	st   SnapshotStatus
	err  error
}

// snapshotsOn says whether the actor takes snapshots.
func (a *partitionActor) snapshotsOn() bool {
	return !a.cfg.NoChangelog && (a.cfg.SnapshotEvery > 0 || a.cfg.SnapshotInterval > 0)
}

// startSnapshots arms the snapshot schedule once the actor runs: counting
// from the changelog sequence it restored to.
func (a *partitionActor) startSnapshots() {
	a.removeCheckpoints()
	if !a.snapshotsOn() {
		return
	}
	if a.snap.lastSeq == 0 && a.restorePath != restoreChangelog {
		// What the store holds came from a snapshot, or from a store that
		// a snapshot may cover already: the next one waits for new records.
		// A store replayed from the whole changelog had no snapshot to use:
		// the first one is due at once.
		a.snap.lastSeq = a.writer.Last()
	}
	a.snap.lastAt = time.Now()
	a.armSnapshotTimer()
}

func (a *partitionActor) armSnapshotTimer() {
	if a.cfg.SnapshotInterval <= 0 || a.self == nil {
		return
	}
	if a.snap.timer == nil {
		self, from, d := a.self, a, a.cfg.SnapshotInterval
		var t *time.Timer
		t = time.AfterFunc(d, func() {
			if errors.Is(self.TrySend(snapshotTick{from: from}), actor.ErrMailboxFull) {
				t.Reset(d) // a full mailbox: tick again later
			}
		})
		a.snap.timer = t
		return
	}
	a.snap.timer.Reset(a.cfg.SnapshotInterval)
}

// maybeSnapshot takes a snapshot if one is due: SnapshotEvery changelog
// records or SnapshotInterval since the last, whichever comes first, and
// no upload running. It runs on the actor's goroutine between commits, so
// the checkpoint holds exactly the committed store; the checkpoint is hard
// links and a flushed WAL, and the upload runs in the background while the
// actor goes on committing.
func (a *partitionActor) maybeSnapshot() {
	// Not while a rebuild for a new version runs: its partial state is no
	// use to a restore, and the rebuild needs its records untrimmed.
	if !a.snapshotsOn() || !a.started || a.abandoned || a.released.Load() || a.snap.busy.Load() || a.ver.rebuilding {
		return
	}
	last := a.writer.Last()
	if last <= a.snap.lastSeq {
		return
	}
	byCount := a.cfg.SnapshotEvery > 0 && a.snap.records >= a.cfg.SnapshotEvery
	byTime := a.cfg.SnapshotInterval > 0 && time.Since(a.snap.lastAt) >= a.cfg.SnapshotInterval
	if !byCount && !byTime {
		return
	}
	if err := a.takeSnapshot(); err != nil {
		// Snapshots are an optimisation of the restore: a failure is
		// logged and counted, never a failure of the partition.
		a.m.snapshotFailures.Inc()
		a.log.Warn("snapshot failed", "changelog_seq", last, "err", err)
	}
	a.snap.lastSeq, a.snap.lastAt, a.snap.records = last, time.Now(), 0
	a.armSnapshotTimer()
}

// checkpointDir is where the checkpoint of the store at changelog sequence
// seq is written: beside the store, on its file system (hard links).
func (a *partitionActor) checkpointDir(seq uint64) string {
	return a.cfg.StoreDir + ".snapshot-" + strconv.FormatUint(seq, 10)
}

// removeCheckpoints deletes the checkpoints a crash left beside the store
// (uploads that never finished); the incarnation before this one waited
// for its upload in Stopped.
func (a *partitionActor) removeCheckpoints() {
	dir, base := filepath.Split(a.cfg.StoreDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), base+".snapshot-") {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				a.log.Warn("remove a leftover checkpoint", "err", err)
			}
		}
	}
}

// takeSnapshot checkpoints the store and starts its upload.
func (a *partitionActor) takeSnapshot() error {
	cp, ok := a.store.(checkpointer)
	if !ok {
		return fmt.Errorf("store %T cannot checkpoint", a.store)
	}
	meta, err := a.store.Meta()
	if err != nil {
		return err
	}
	dir := a.checkpointDir(meta.ChangelogSeq)
	if err := os.RemoveAll(dir); err != nil { // a crashed upload's
		return err
	}
	start := time.Now()
	if err := cp.Checkpoint(dir); err != nil {
		_ = os.RemoveAll(dir)
		return err
	}
	took := time.Since(start)
	m := snapshot.Manifest{Type: a.cfg.Type, Partition: a.cfg.Partition, ChangelogSeq: meta.ChangelogSeq,
		ChangelogID: a.changelogID, Offset: meta.Offset, Epoch: meta.Epoch,
		StateVersion: found(meta.Version, meta.Migrating)}
	ctx, cancel := context.WithCancel(a.ctx)
	a.snap.cancel = cancel
	a.snap.busy.Store(true)
	a.snap.wg.Add(1)
	self, from := a.self, a
	up := &uploadDone{done: make(chan struct{})}
	a.snap.cur = up
	go func() {
		defer a.snap.wg.Done()
		defer a.snap.busy.Store(false)
		defer cancel()
		defer os.RemoveAll(dir)
		st, err := a.upload(ctx, dir, m)
		if err == nil {
			a.log.Info("snapshot uploaded", "changelog_seq", st.ChangelogSeq, "offset", st.Offset, "files", st.Files,
				"bytes", st.Bytes, "uploaded_bytes", st.Uploaded, "checkpoint", took.Round(time.Microsecond),
				"took", time.Since(start).Round(time.Millisecond))
		}
		up.res = snapshotDone{from: from, st: st, err: err}
		close(up.done)
		if self != nil {
			_ = self.TrySend(up.res)
		}
	}()
	return nil
}

// upload runs on the upload goroutine: it stores the checkpoint in dir,
// then prunes the partition's old snapshots.
func (a *partitionActor) upload(ctx context.Context, dir string, m snapshot.Manifest) (SnapshotStatus, error) {
	a.snap.bucketMu.Lock()
	b := a.snap.bucket
	a.snap.bucketMu.Unlock()
	if b == nil {
		var err error
		if b, err = snapshot.Open(ctx, a.cfg.JS, a.cfg.Type, a.snapshotConfig()); err != nil {
			return SnapshotStatus{}, err
		}
		a.snap.bucketMu.Lock()
		a.snap.bucket = b
		a.snap.bucketMu.Unlock()
	}
	m, st, err := b.Upload(ctx, dir, m)
	if err != nil {
		return SnapshotStatus{}, err
	}
	a.m.snapshots.Inc()
	a.m.snapshotBytes.Add(float64(st.UploadedBytes))
	ps, err := b.Prune(ctx, m.Partition, m.ChangelogID)
	if err != nil && ctx.Err() == nil {
		a.log.Warn("prune snapshots", "err", err)
	}
	// Trim the changelog below the oldest kept snapshot. Outbox entries
	// there that were not forwarded yet are in the snapshots too, as the
	// store's pending entries (pending.go): a restore forwards them from
	// there.
	if upTo := ps.OldestKept; err == nil && upTo > 1 {
		if err := changelog.Trim(ctx, a.cfg.JS, a.subjects, upTo); err != nil && ctx.Err() == nil {
			a.log.Warn("trim the changelog", "below", upTo, "err", err)
		} else if err == nil {
			a.m.changelogTrims.Inc()
		}
	}
	return SnapshotStatus{ChangelogSeq: m.ChangelogSeq, Offset: m.Offset, Created: m.Created,
		Files: st.Files, Bytes: st.Bytes, Uploaded: st.UploadedBytes}, nil
}

func (a *partitionActor) snapshotConfig() snapshot.Config {
	c := a.cfg.Snapshot
	c.Logger = a.log
	return c
}

// snapshotRequested takes a snapshot now (snapshotNow), unless one is
// uploading (its outcome answers) or the store holds nothing new since the
// last (nil: Status.Snapshot is current). It works whether or not periodic
// snapshots are configured.
func (a *partitionActor) snapshotRequested() (*uploadDone, error) {
	switch {
	case a.cfg.NoChangelog:
		return nil, errors.New("partition: a type without a changelog has no snapshots")
	case !a.started || a.abandoned || a.released.Load():
		return nil, fmt.Errorf("%w: not running", ErrUnavailable)
	case a.snap.busy.Load():
		return a.snap.cur, nil
	case a.writer.Last() <= a.snap.lastSeq && a.status.p.Load().Snapshot != nil:
		return nil, nil
	}
	last := a.writer.Last()
	if err := a.takeSnapshot(); err != nil {
		a.m.snapshotFailures.Inc()
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	a.snap.lastSeq, a.snap.lastAt, a.snap.records = last, time.Now(), 0
	a.armSnapshotTimer()
	return a.snap.cur, nil
}

// snapshotFinished handles an upload's outcome on the actor's goroutine.
func (a *partitionActor) snapshotFinished(m snapshotDone) {
	if m.err != nil {
		if a.ctx.Err() == nil {
			a.m.snapshotFailures.Inc()
			a.log.Warn("snapshot upload failed; the next one is taken as scheduled", "err", m.err)
		}
		return
	}
	st := m.st
	a.status.update(func(s *Status) { s.Snapshot = &st })
}

// stopSnapshots cancels a running upload and waits for it (Stopped): its
// manifest is not written, and Prune removes its files later.
func (a *partitionActor) stopSnapshots() {
	if a.snap.timer != nil {
		a.snap.timer.Stop()
	}
	if a.snap.cancel != nil {
		a.snap.cancel()
	}
	a.snap.wg.Wait()
}

// restoreSnapshot puts the newest usable snapshot of the partition in the
// place of the local store, which must be empty (no changelog position):
// one of this changelog stream (its identity), of a sequence the
// changelog has reached, and of this state version. It reports whether it
// did. No snapshot, or none usable, leaves the store as it was: restore
// then replays the whole changelog, which works only while it was never
// trimmed. Errors other than the actor stopping are logged and also leave
// the store to the full replay.
func (a *partitionActor) restoreSnapshot(ctx context.Context) (bool, error) {
	got, err := fetchSnapshot(ctx, a.cfg, a.log, a.changelogID, a.cl.CachedInfo().State)
	if err != nil || got == nil {
		return false, err
	}
	a.snap.bucketMu.Lock()
	a.snap.bucket = got.bucket
	a.snap.bucketMu.Unlock()
	if err := a.store.Close(); err != nil {
		return false, err
	}
	a.store = nil
	if a.store, err = got.install(a.cfg); err != nil {
		return false, err
	}
	m := got.Manifest
	a.snap.lastSeq, a.snap.records = m.ChangelogSeq, 0
	a.status.update(func(s *Status) {
		s.Snapshot = &SnapshotStatus{ChangelogSeq: m.ChangelogSeq, Offset: m.Offset, Created: m.Created,
			Files: len(m.Files), Bytes: m.Size(), Restored: true}
	})
	return true, nil
}

// fetchedSnapshot is a snapshot downloaded beside a partition's store.
type fetchedSnapshot struct {
	snapshot.Downloaded
	bucket *snapshot.Store
	dir    string
}

// install puts the downloaded store in the place of the partition's store,
// which its caller has closed, and opens it.
func (f *fetchedSnapshot) install(cfg *Config) (*statestore.Pebble, error) {
	if err := statestore.Install(f.dir, cfg.StoreDir); err != nil {
		return nil, err
	}
	return openStore(cfg)
}

// fetchSnapshot downloads, beside cfg's store, the newest snapshot of
// cfg's partition that belongs to the changelog whose identity is id and
// whose state is st: of a sequence the changelog has reached and has not
// trimmed past (the records after it are all there), of a state version
// this actor can run. It returns nil when there is no snapshot or none
// usable; errors other than ctx ending are logged and return nil too, so
// that the caller goes on with the changelog alone.
func fetchSnapshot(ctx context.Context, cfg *Config, log *slog.Logger, id []byte, st jetstream.StreamState) (*fetchedSnapshot, error) {
	sc := cfg.Snapshot
	sc.Logger = log
	b, err := snapshot.Lookup(ctx, cfg.JS, cfg.Type, sc)
	if errors.Is(err, snapshot.ErrNoSnapshot) {
		return nil, nil
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		log.Warn("cannot look up snapshots; restoring from the changelog alone", "err", err)
		return nil, nil
	}
	accept := func(m snapshot.Manifest) error {
		switch {
		case m.Type != cfg.Type || m.Partition != cfg.Partition:
			return fmt.Errorf("snapshot of %s/%d", m.Type, m.Partition)
		case !bytes.Equal(m.ChangelogID, id):
			return errors.New("snapshot of an earlier changelog stream of the same name")
		case m.ChangelogSeq > st.LastSeq:
			return fmt.Errorf("snapshot at changelog sequence %d, the changelog ends at %d", m.ChangelogSeq, st.LastSeq)
		case m.ChangelogSeq+1 < st.FirstSeq:
			return fmt.Errorf("snapshot at changelog sequence %d, the changelog was trimmed to start at %d", m.ChangelogSeq, st.FirstSeq)
		case m.StateVersion > cfg.stateVersion():
			// A newer version's state: the restore would refuse it anyway.
			return fmt.Errorf("snapshot of state version %d, newer than %d", m.StateVersion, cfg.stateVersion())
		}
		return nil
	}
	start := time.Now()
	dl := cfg.StoreDir + ".restore"
	if err := os.RemoveAll(dl); err != nil {
		return nil, err
	}
	d, err := b.Download(ctx, cfg.Partition, id, dl, accept)
	if errors.Is(err, snapshot.ErrNoSnapshot) {
		if len(d.Skipped) > 0 {
			log.Warn("no usable snapshot; restoring from the changelog alone", "err", err)
		}
		return nil, nil
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		log.Warn("snapshot download failed; restoring from the changelog alone", "err", err)
		return nil, nil
	}
	m := d.Manifest
	log.Info("restored from snapshot", "changelog_seq", m.ChangelogSeq, "offset", m.Offset, "files", len(m.Files),
		"bytes", m.Size(), "skipped", len(d.Skipped), "took", time.Since(start).Round(time.Millisecond))
	return &fetchedSnapshot{Downloaded: d, bucket: b, dir: dl}, nil
}
