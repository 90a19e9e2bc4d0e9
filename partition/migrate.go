package partition

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"
)

// MigrateFunc upgrades one value of a store from state version from to the
// actor type's version: it returns the new value, or nil to delete the key.
// An error stops the migration (the values migrated before it are
// committed) and fails the actor, which retries with backoff; make it
// deterministic. It runs once for each value whose migration commits: a crash
// can only make it run again for the values of the batch in flight.
type MigrateFunc func(store string, key []byte, from int, value []byte) ([]byte, error)

// Migration, eagerly, before any input.
//
// A partition actor that restores state of an older version than its own
// (Config.StateVersion) upgrades it after it has fenced older owners and
// before it reads input:
//
//   - without Config.Migrate, the values stay as they are (the new version
//     reads the old ones); one meta record raises the version;
//   - with Migrate, it walks every key of every store in bytewise order of the
//     local store keys (store + 0x00 + key) and commits the new values to the
//     changelog like any batch: at most MaxBatchRecords-1 values and a meta
//     record that says Migrating = the new version and MigratedThrough = the
//     last key migrated. The last batch says Version = the new version. An
//     actor that restores a migration in progress (a crash, a failover to a
//     hot replica, which applies the migration's batches like any others)
//     resumes after MigratedThrough, so no committed value is migrated twice.
//
// Older nodes refuse the state as soon as the first migration batch is
// committed (found = max(Version, Migrating)). A node of a version above
// Migrating cannot finish another version's migration (it cannot tell Migrate
// which keys hold which version past the first pass): it refuses with a
// *VersionError saying so, and a node of that version must finish it.

// errMigrateStop ends a chunk's scan of the store.
var errMigrateStop = errors.New("migrate: chunk full")

// scanner is a store that can scan from a key on (statestore.Pebble).
type scanner interface {
	IterateAfter(prefix, after []byte, fn func(key, value []byte) error) error
}

// kv is one local store entry read for a migration.
type kv struct{ key, value []byte }

// upgrade brings the state from the version it was restored at up to the
// actor's, as described above. It is called with the epoch record written.
func (a *partitionActor) upgrade(ctx context.Context) error {
	want := a.cfg.stateVersion()
	if a.ver.version >= want && a.ver.migrating == 0 && !a.ver.rebuilding {
		return nil
	}
	if a.cfg.RebuildOnNewVersion || a.ver.rebuilding {
		if a.ver.rebuilding && a.ver.version != want && !a.cfg.RebuildOnNewVersion {
			return &VersionError{Type: a.cfg.Type, Partition: a.cfg.Partition, Version: want, Found: a.ver.version,
				Pending: true, FromVersion: a.ver.version, Epoch: a.epoch, Owner: a.cfg.Owner}
		}
		a.early.discard() // the rebuild reads the input itself; startReader opens a consumer after it
		a.early = nil
		return a.rebuildVersion(ctx)
	}
	if a.ver.migrating != 0 && a.ver.migrating != want {
		return &VersionError{Type: a.cfg.Type, Partition: a.cfg.Partition, Version: want, Found: a.ver.migrating,
			Pending: true, FromVersion: a.ver.version, Epoch: a.epoch, Owner: a.cfg.Owner}
	}
	if a.cfg.Migrate == nil {
		a.log.Info("state version raised; the values are kept as they are (no Migrate)", "from", a.ver.version, "to", want)
		a.ver = versionState{version: want, dirty: true}
		return a.commit(ctx)
	}
	// The input consumer opened while fencing would idle past its
	// inactivity threshold during a long migration: startReader opens one.
	a.early.discard()
	a.early = nil

	from := a.ver.version
	var after []byte
	if a.ver.through != "" {
		after = []byte(a.ver.through)
	}
	start := time.Now()
	if after == nil {
		a.log.Info("migrating the state", "from", from, "to", want)
	} else {
		a.log.Info("resuming the migration of the state", "from", from, "to", want, "after_key", fmt.Sprintf("%q", after))
	}
	a.ver.migrating = want
	limit := a.cfg.MaxBatchRecords - 1 // and the meta record
	migrated := 0
	for {
		chunk, more, err := a.readChunk(after, limit, a.cfg.MaxBatchBytes)
		if err != nil {
			return fmt.Errorf("migrate: read store: %w", err)
		}
		for _, e := range chunk {
			store, key := splitStoreKey(e.key)
			v, err := a.cfg.Migrate(store, key, from, e.value)
			if err != nil {
				err = fmt.Errorf("migrate %s key %q from state version %d to %d: %w", store, key, from, want, err)
				if len(a.writes) > 0 { // keep what was migrated before it
					if cerr := a.commitMigrated(ctx, after); cerr != nil {
						return errors.Join(err, cerr)
					}
				}
				return err
			}
			k := string(e.key)
			a.ws[k] = len(a.writes)
			a.writes = append(a.writes, write{key: k, value: v, del: v == nil})
			after = e.key
			migrated++
		}
		if !more {
			break
		}
		if err := a.commitMigrated(ctx, after); err != nil {
			return err
		}
		if h := a.cfg.Hooks.AfterMigrateBatch; h != nil {
			if err := h(after); err != nil {
				return err
			}
		}
	}
	// The last batch (empty for an empty store) completes the migration.
	a.ver = versionState{version: want, dirty: true}
	if err := a.commit(ctx); err != nil {
		return err
	}
	a.log.Info("migrated the state", "from", from, "to", want, "values", migrated,
		"took", time.Since(start).Round(time.Millisecond))
	return nil
}

// commitMigrated commits the migrated values in the write set with a meta
// record saying the migration reached the local store key through.
func (a *partitionActor) commitMigrated(ctx context.Context, through []byte) error {
	a.ver.through, a.ver.dirty = string(through), true
	return a.commit(ctx)
}

// readChunk reads up to limit entries of the stores (not the internal keys,
// which start with 0x00) after the local store key after, copied; more says
// whether entries are left past them.
func (a *partitionActor) readChunk(after []byte, limit, maxBytes int) (chunk []kv, more bool, err error) {
	size := 0
	fn := func(k, v []byte) error {
		if len(k) == 0 || k[0] == 0 || isTableKey(k) {
			return nil // internal (changelog identity, pending outbox entries), or a table's
		}
		if len(chunk) == limit || len(chunk) > 0 && size+len(k)+len(v) > maxBytes {
			more = true
			return errMigrateStop
		}
		size += len(k) + len(v)
		chunk = append(chunk, kv{key: bytes.Clone(k), value: bytes.Clone(v)})
		return nil
	}
	if s, ok := a.store.(scanner); ok {
		err = s.IterateAfter(nil, after, fn)
	} else {
		err = a.store.Iterate(nil, func(k, v []byte) error {
			if after != nil && bytes.Compare(k, after) <= 0 {
				return nil
			}
			return fn(k, v)
		})
	}
	if errors.Is(err, errMigrateStop) {
		err = nil
	}
	return chunk, more, err
}
