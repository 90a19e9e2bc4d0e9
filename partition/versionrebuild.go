package partition

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/statestore"
)

// Rebuild on a new version (Config.RebuildOnNewVersion).
//
// A partition actor whose state is of an older version, instead of migrating
// it, throws it away and runs its input stream again from the first event
// through the new handler, up to the offset committed before; the handler's
// emits, sends, replies and dead letters are suppressed on the way, as they
// took effect the first time. Input past that offset is then processed as
// usual. The steps, each safe to crash after:
//
//  1. check that the input stream still holds its first event (else
//     ErrInputGone, and nothing has changed);
//  2. commit a meta record that starts the rebuild: Version = the new
//     version (older nodes refuse the partition from here on),
//     Rebuilding, and RebuiltAt = its own changelog sequence R; the offset
//     stays the one committed before;
//  3. drop every value from the local store (its pending outbox entries
//     and meta stay) and apply the state records from R on, which an
//     earlier attempt may have written; the local store records that it
//     is clean for R (rebuildCleanKey);
//  4. replay the input, committing the writes to the changelog with the
//     progress (RebuiltThrough) in each meta record, so a crash resumes
//     after the last event committed; a store that is not clean for R (an
//     older one, a hot replica's) is discarded again first;
//  5. commit a meta record without Rebuilding.
//
// Every later meta record keeps RebuiltAt. The state records below R stay
// in the changelog until a snapshot after the rebuild trims them: a reader
// (a restore, a hot replica) that meets the meta record at R drops the
// values it holds and goes on (rebuildCheck), and one that meets a later
// meta record of another rebuild while it holds state is discarded and
// restored.

// rebuildCleanKey holds, in a local store's internal key space, the
// RebuiltAt of the rebuild the store was emptied for.
const rebuildCleanKey = "\x00rebuild-clean"

// rebuildCommitEvery is the most events between two commits of a rebuild,
// which record its progress.
const rebuildCommitEvery = 1000

// rebuildVersion runs the rebuild above; the epoch record is written.
func (a *partitionActor) rebuildVersion(ctx context.Context) error {
	want := a.cfg.stateVersion()
	target := a.offset // committed before the rebuild: effects up to here took place
	if !a.ver.rebuilding || a.ver.version != want {
		if err := a.checkInputFrom(ctx, 1); err != nil {
			return err
		}
		a.log.Info("rebuilding the state from the input stream for a new version (slow: every event runs again)",
			"from_version", a.ver.version, "to_version", want, "to_offset", target)
		if len(a.writes) > 0 || len(a.outbox) > 0 {
			// The meta record at R must commit alone: a reader drops what it
			// holds when it meets it, records of its commit included.
			if err := a.commit(ctx); err != nil {
				return err
			}
		}
		a.ver = versionState{version: want, rebuilding: true, rebuiltAt: a.writer.Last() + 1, dirty: true}
		if err := a.commit(ctx); err != nil {
			return err
		}
	}
	if err := a.cleanForRebuild(ctx); err != nil {
		return err
	}
	if a.ver.rebuiltThrough < target {
		if err := a.replayForVersion(ctx, target); err != nil {
			return err
		}
	}
	a.ver = versionState{version: want, rebuiltAt: a.ver.rebuiltAt, dirty: true}
	if err := a.commit(ctx); err != nil {
		return err
	}
	a.log.Info("rebuilt the state for the new version", "version", want, "offset", a.offset)
	return nil
}

// cleanForRebuild makes sure the local store holds nothing from before the
// rebuild that began at changelog sequence a.ver.rebuiltAt: unless it
// records that it is clean for it, every value of the stores is deleted
// from the local store (which the restore brought to the changelog's end:
// its pending outbox entries and meta stay), and the state records from
// the rebuild's start on, which an earlier attempt of it wrote, are applied
// again. The changelog holds them all: no snapshot is taken, so nothing is
// trimmed, while a rebuild runs; what a trim removed before it is not needed.
func (a *partitionActor) cleanForRebuild(ctx context.Context) error {
	at := a.ver.rebuiltAt
	v, err := a.store.Get([]byte(rebuildCleanKey))
	switch {
	case err == nil && len(v) == 8 && binary.BigEndian.Uint64(v) == at:
		return nil
	case err != nil && !errors.Is(err, statestore.ErrNotFound):
		return err
	}
	last := a.writer.Last()
	a.m.storeDiscards.Inc()
	if err := dropState(a.store); err != nil {
		return err
	}
	b := a.store.NewBatch()
	defer func() { b.Close() }()
	end, err := changelog.Replay(ctx, a.cfg.JS, a.subjects, changelog.ReplayConfig{From: at}, func(seq uint64, r changelog.Record) error {
		if r.Kind != changelog.KindSet && r.Kind != changelog.KindDelete {
			return nil
		}
		return applyRecord(b, seq, r)
	})
	if err != nil {
		return fmt.Errorf("rebuild: replay the rebuild's records: %w", err)
	}
	if end != last {
		return fmt.Errorf("%w: the changelog ends at %d, this owner wrote up to %d", errChangelogMoved, end, last)
	}
	b.Set([]byte(rebuildCleanKey), binary.BigEndian.AppendUint64(nil, at))
	if err := b.Commit(); err != nil {
		return err
	}
	a.log.Info("dropped the old state from the local store", "rebuilt_at", at)
	return nil
}

// dropStateMidway is dropState for a reader applying the changelog in
// batch b: it commits b (the records before the rebuild's start), drops the
// values, and returns a new batch for the records after it.
func dropStateMidway(st statestore.Store, b statestore.Batch) (statestore.Batch, error) {
	err := b.Commit()
	b.Close()
	if err == nil {
		err = dropState(st)
	}
	return st.NewBatch(), err
}

// dropState deletes every value of the stores from local store st,
// keeping eddy's own keys (they start with 0: the changelog identity, the
// pending outbox entries, the rebuild marker).
func dropState(st statestore.Store) error {
	b := st.NewBatch()
	defer func() { b.Close() }()
	err := st.Iterate(nil, func(k, _ []byte) error {
		if len(k) == 0 || k[0] == 0 {
			return nil
		}
		b.Delete(k)
		if b.Len() < 16384 {
			return nil
		}
		if err := b.Commit(); err != nil {
			return err
		}
		b.Close()
		b = st.NewBatch()
		return nil
	})
	if err != nil {
		return err
	}
	return b.Commit()
}

// checkInputFrom fails with ErrInputGone unless the input stream still
// holds every event from sequence from on.
func (a *partitionActor) checkInputFrom(ctx context.Context, from uint64) error {
	st, err := a.cfg.JS.Stream(ctx, a.cfg.Type)
	if err != nil {
		return fmt.Errorf("rebuild: input stream %s: %w", a.cfg.Type, err)
	}
	s := st.CachedInfo().State
	if s.FirstSeq > from && a.offset >= from {
		return fmt.Errorf("%w: rebuilding the state of %s/%d for a new version needs the input stream %s from sequence %d, and its first sequence is %d",
			ErrInputGone, a.cfg.Type, a.cfg.Partition, a.cfg.Type, from, s.FirstSeq)
	}
	return nil
}

// replayForVersion runs the input partition from a.ver.rebuiltThrough+1 to
// target through the handler, with its outbox, replies and dead letters
// suppressed, committing the writes with the progress.
func (a *partitionActor) replayForVersion(ctx context.Context, target uint64) error {
	from := a.ver.rebuiltThrough + 1
	if err := a.checkInputFrom(ctx, from); err != nil {
		return err
	}
	it, err := a.consumeInput(ctx, from-1)
	if err != nil {
		return fmt.Errorf("rebuild: input consumer: %w", err)
	}
	defer it.Stop()
	a.rebuilding = true // suppresses dead letters; commits still go to the changelog
	defer func() { a.rebuilding = false }()
	start, lastReport := time.Now(), time.Now()
	events := 0
	for a.ver.rebuiltThrough < target {
		msg, seq, pending, err := a.nextRebuildEvent(ctx, it, target)
		if err != nil {
			return err
		}
		if err := a.runEvent(ctx, msg, seq); err != nil { // may commit the batch so far
			return err
		}
		a.outbox, a.replies = a.outbox[:0], a.replies[:0]
		a.ver.rebuiltThrough = seq
		a.m.rebuildEvents.Inc()
		events++
		if events%rebuildCommitEvery == 0 {
			a.ver.dirty = true
			if err := a.commit(ctx); err != nil {
				return err
			}
		}
		if pending == 0 && seq < target {
			return fmt.Errorf("%w: %s ends at %d, before the committed offset %d", ErrInputGone, a.cfg.Type, seq, target)
		}
		if now := time.Now(); now.Sub(lastReport) >= a.cfg.ProgressEvery {
			lastReport = now
			a.log.Info("rebuild progress", "events", events, "offset", seq, "to_offset", target,
				"rate", fmt.Sprintf("%.0f/s", float64(events)/now.Sub(start).Seconds()))
		}
	}
	a.ver.dirty = true
	return a.commit(ctx) // the last events' writes; the next commit ends the rebuild
}
