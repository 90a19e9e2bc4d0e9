package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/partition"
)

// snapshotRestore measures restore path 3 against path 4, in one run: a
// node restores the changelog built for (c), snapshots its store (the
// upload is timed against a raw Object Store put of as many bytes),
// processes a tail of 1% more records, and stops; its data directory is
// lost; a new node restores from the snapshot plus the tail. The speedup is
// the whole-changelog restore time of (c.ii), changelog, over that one.
func (b *bench) snapshotRestore(ctx context.Context, changelog time.Duration) error {
	dir := filepath.Join(b.dir, "snapshot")
	defer os.RemoveAll(dir)
	typ := eddy.ActorType{Name: restoreType, Partitions: 1, Handler: countEvent}
	snapshots := func(c *eddy.Config) { c.SnapshotInterval = 50 * time.Millisecond }

	b.uploadTook.Store(0)
	node, _, err := b.node(ctx, dir, typ, snapshots)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if err := waitRunning(ctx, node); err != nil {
		return errors.Join(err, stopNode(node))
	}
	for b.uploadTook.Load() == 0 {
		select {
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("snapshot: none uploaded: %w", ctx.Err()), stopNode(node))
		case <-time.After(10 * time.Millisecond):
		}
	}
	upTook, upBytes := time.Duration(b.uploadTook.Load()), b.uploadBytes.Load()
	tail := max(b.opts.restoreRecords/100, 1)
	if err := b.sendTail(ctx, node, tail); err != nil {
		return errors.Join(fmt.Errorf("snapshot: tail: %w", err), stopNode(node))
	}
	if err := stopNode(node); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil { // the disk is lost
		return err
	}

	b.fromSnapshot.Store(false)
	start := time.Now()
	node, _, err = b.node(ctx, dir, typ, snapshots)
	if err != nil {
		return fmt.Errorf("snapshot restore: %w", err)
	}
	err = waitRunning(ctx, node)
	took := time.Since(start)
	if err := errors.Join(err, stopNode(node)); err != nil {
		return fmt.Errorf("snapshot restore: %w", err)
	}
	if !b.fromSnapshot.Load() {
		return errors.New("snapshot restore: the partition did not restore from its snapshot")
	}
	raw, err := b.rawObjectPut(ctx, upBytes)
	if err != nil {
		return fmt.Errorf("raw object store put: %w", err)
	}
	mb := func(n int64, d time.Duration) float64 { return float64(n) / (1 << 20) / max(d.Seconds(), 1e-9) }
	b.printf("  (d.i) snapshot upload: %d bytes in %v = %.1f MiB/s; raw Object Store put of as many bytes: %v = %.1f MiB/s",
		upBytes, upTook.Round(time.Millisecond), mb(upBytes, upTook), raw.Round(time.Millisecond), mb(upBytes, raw))
	b.printf("  (d.ii) restore of %d records from the snapshot + a tail of %d: %v (whole changelog, c.ii: %v)",
		b.opts.restoreRecords, tail, took.Round(time.Millisecond), changelog.Round(time.Millisecond))
	b.printf("bench: snapshot upload ratio=%.2f eddy=%.1fMiB/s raw=%.1fMiB/s", mb(upBytes, upTook)/mb(upBytes, raw), mb(upBytes, upTook), mb(upBytes, raw))
	b.printf("bench: snapshot restore speedup=%.2f snapshot=%v changelog=%v", changelog.Seconds()/max(took.Seconds(), 1e-9),
		took.Round(time.Millisecond), changelog.Round(time.Millisecond))
	return nil
}

// sendTail sends n events to the restore type's input and waits until node
// has committed them.
func (b *bench) sendTail(ctx context.Context, node *eddy.Node, n int) error {
	for i := range n {
		m := partition.Input{Type: restoreType, Partitions: 1}.Msg("t"+strconv.Itoa(i), []byte{0xc0})
		if _, err := b.js.PublishMsgAsync(m, jetstream.WithStallWait(time.Minute)); err != nil {
			return err
		}
	}
	select {
	case <-b.js.PublishAsyncComplete():
	case <-ctx.Done():
		return ctx.Err()
	}
	st, err := b.js.Stream(ctx, restoreType)
	if err != nil {
		return err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return err
	}
	for {
		ps, err := node.Status()
		if err != nil {
			return err
		}
		if len(ps) == 1 && ps[0].Offset >= info.State.LastSeq {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// rawObjectPut times one Object Store put of n random bytes into a bucket
// of its own, deleted afterwards.
func (b *bench) rawObjectPut(ctx context.Context, n int64) (time.Duration, error) {
	data := make([]byte, n)
	if _, err := rand.Read(data); err != nil {
		return 0, err
	}
	os, err := b.js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: "bench_raw_put"})
	if err != nil {
		return 0, err
	}
	defer func() { _ = b.js.DeleteObjectStore(context.Background(), "bench_raw_put") }()
	start := time.Now()
	if _, err := os.Put(ctx, jetstream.ObjectMeta{Name: "blob"}, bytes.NewReader(data)); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}
