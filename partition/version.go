package partition

import (
	"errors"
	"fmt"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/statestore"
)

// State versions.
//
// An actor type's stores hold values of one state version
// (Config.StateVersion; 0 and 1 are both version 1, so changelogs and stores
// written before versions were recorded are version 1). Every meta record of
// the changelog and the local store's Meta record it, so:
//
//   - an actor whose changelog (or store) holds state of a newer version than
//     its own refuses to run, before it writes anything (not even its epoch
//     record, which would fence the newer owner): a *VersionError, which stops
//     it for good, as a fence does; a cluster node gives the partition back to
//     the assignor and avoids it, so that it lands on a node that runs the
//     newer version. A newer owner that fenced an older one is safe from it
//     twice over: the older one's commits fail on the epoch fence, and an
//     older one that restarts refuses at restore;
//   - a hot replica of an older version stops tailing at the first meta record
//     of a newer version, without committing that batch, with the
//     *VersionError as its Err;
//   - an actor that finds an older version upgrades the state after it has
//     fenced and before it takes input (migrate.go).

// ErrStateVersion means a partition's changelog or store holds state of a
// newer version than the actor type running it (or a migration this version
// cannot finish): the partition cannot run here, and retrying does not help.
var ErrStateVersion = errors.New("eddy: state of a newer version")

// VersionError says why an actor refused a partition's state:
// errors.Is(err, ErrStateVersion) holds for it.
type VersionError struct {
	// Type and Partition name the partition.
	Type      string
	Partition int
	// Version is the refusing actor's state version.
	Version int
	// Found is the version the state holds (a migration's target version
	// when one is in progress).
	Found int
	// Epoch and Owner wrote the newest meta record; Seq is its changelog
	// sequence (0 when unknown).
	Epoch uint64
	Owner string
	Seq   uint64
	// Pending, when set, is a migration to Found that this version cannot
	// finish (Found < Version, from FromVersion).
	Pending     bool
	FromVersion int
}

func (e *VersionError) Error() string {
	if e.Pending {
		return fmt.Sprintf("%v: %s/%d: a migration from state version %d to %d is in progress (written by owner %q at epoch %d, changelog sequence %d); this node runs version %d: finish it on a node running version %d first",
			ErrStateVersion, e.Type, e.Partition, e.FromVersion, e.Found, e.Owner, e.Epoch, e.Seq, e.Version, e.Found)
	}
	return fmt.Sprintf("%v: %s/%d holds state version %d (written by owner %q at epoch %d, changelog sequence %d); this node runs version %d and cannot read it: run the partition on a node with version %d or newer",
		ErrStateVersion, e.Type, e.Partition, e.Found, e.Owner, e.Epoch, e.Seq, e.Version, e.Found)
}

// Unwrap makes errors.Is(err, ErrStateVersion) hold.
func (e *VersionError) Unwrap() error { return ErrStateVersion }

// normVersion maps a recorded or configured state version to the version it
// means: 0 (not recorded, not set) is version 1.
func normVersion(v int) int { return max(v, 1) }

// stateVersion is the actor type's state version.
func (c *Config) stateVersion() int { return normVersion(c.StateVersion) }

// versionState is the state version a partition actor's stores hold, as its
// next meta record will say.
type versionState struct {
	version   int    // the version of the values (of those above through, while migrating)
	migrating int    // a migration's target version, or 0
	through   string // the last local store key migrated
	// A rebuild from the input stream (versionrebuild.go): where it began
	// in the changelog, whether it is in progress, and how far it got.
	rebuiltAt      uint64
	rebuilding     bool
	rebuiltThrough uint64
	// dirty: changed since the last commit, which must write a meta record
	// even with nothing else to commit.
	dirty bool
}

// stamp records s in a meta record about to be committed.
func (s *versionState) stamp(m changelog.Meta) changelog.Meta {
	m.Version, m.Migrating, m.MigratedThrough = s.version, s.migrating, s.through
	m.RebuiltAt, m.Rebuilding, m.RebuiltThrough = s.rebuiltAt, s.rebuilding, s.rebuiltThrough
	s.dirty = false
	return m
}

// stampStore records s in the local store's Meta.
func (s *versionState) stampStore(m statestore.Meta) statestore.Meta {
	m.Version, m.Migrating, m.MigratedThrough = s.version, s.migrating, s.through
	m.RebuiltAt, m.Rebuilding, m.RebuiltThrough = s.rebuiltAt, s.rebuilding, s.rebuiltThrough
	return m
}

// storeVersion copies the version fields of meta record src into dst.
func storeVersion(dst statestore.Meta, src changelog.Meta) statestore.Meta {
	dst.Version, dst.Migrating, dst.MigratedThrough = src.Version, src.Migrating, src.MigratedThrough
	dst.RebuiltAt, dst.Rebuilding, dst.RebuiltThrough = src.RebuiltAt, src.Rebuilding, src.RebuiltThrough
	return dst
}

// metaVersion copies the version fields of a store's Meta src into dst.
func metaVersion(dst changelog.Meta, src statestore.Meta) changelog.Meta {
	dst.Version, dst.Migrating, dst.MigratedThrough = src.Version, src.Migrating, src.MigratedThrough
	dst.RebuiltAt, dst.Rebuilding, dst.RebuiltThrough = src.RebuiltAt, src.Rebuilding, src.RebuiltThrough
	return dst
}

// withVersionOf copies the version fields of meta record src into dst.
func withVersionOf(dst, src changelog.Meta) changelog.Meta {
	dst.Version, dst.Migrating, dst.MigratedThrough = src.Version, src.Migrating, src.MigratedThrough
	dst.RebuiltAt, dst.Rebuilding, dst.RebuiltThrough = src.RebuiltAt, src.Rebuilding, src.RebuiltThrough
	return dst
}

// rebuildCheck follows the rebuilds a reader of the changelog passes (a
// restore, a hot replica's tail) to tell when the store it fills holds
// state from before a rebuild, which is not part of the state any more.
type rebuildCheck struct {
	rebuiltAt uint64 // of the state the store holds
	holds     bool   // the store holds state records of that state
}

// newRebuildCheck starts a check for a store whose meta is held.
func newRebuildCheck(held statestore.Meta) rebuildCheck {
	return rebuildCheck{rebuiltAt: held.RebuiltAt, holds: held.ChangelogSeq > 0}
}

// record notes a state record applied to the store.
func (c *rebuildCheck) record() { c.holds = true }

// meta checks the meta record m (at seq) a reader meets. When m starts a
// rebuild (its commit is the first at m.RebuiltAt, and holds no other
// record: versionrebuild.go), drop is true: the values the store holds are
// not part of the state from here on, and the reader drops them (keeping
// its pending outbox entries) before it goes on. A store that holds no
// state records takes m's rebuild as its own. Otherwise a store holding
// state of another rebuild is errStoreAhead: it restored past the start of
// m's rebuild (a trimmed changelog) and must restore from a snapshot.
func (c *rebuildCheck) meta(m changelog.Meta, seq uint64) (drop bool, err error) {
	switch {
	case m.RebuiltAt == c.rebuiltAt:
		return false, nil
	case m.RebuiltAt != 0 && m.Prev+1 == m.RebuiltAt:
		drop = c.holds
	case c.holds:
		return false, fmt.Errorf("%w: the meta record at changelog sequence %d is of the state rebuilt at %d, the local store of the state rebuilt at %d",
			errStoreAhead, seq, m.RebuiltAt, c.rebuiltAt)
	}
	c.rebuiltAt, c.holds = m.RebuiltAt, false
	return drop, nil
}

// found is the newest version state recorded in meta holds.
func found(version, migrating int) int { return max(normVersion(version), migrating) }

// checkVersion loads the state version of the restored store (meta) into
// the actor, or refuses state of a newer version than the actor's with a
// *VersionError.
func (a *partitionActor) checkVersion(meta statestore.Meta) error {
	want := a.cfg.stateVersion()
	if f := found(meta.Version, meta.Migrating); f > want {
		a.log.Error("the partition's state is of a newer version than this node's: refusing it", "version", want,
			"found", f, "owner", meta.Owner, "epoch", meta.Epoch)
		return &VersionError{Type: a.cfg.Type, Partition: a.cfg.Partition, Version: want, Found: f,
			Epoch: meta.Epoch, Owner: meta.Owner, Seq: meta.MetaSeq}
	}
	a.ver = versionState{version: normVersion(meta.Version), migrating: meta.Migrating,
		through: meta.MigratedThrough, rebuiltAt: meta.RebuiltAt, rebuilding: meta.Rebuilding,
		rebuiltThrough: meta.RebuiltThrough}
	return nil
}

// refuses returns a *VersionError when meta record m (at changelog
// sequence seq) holds state of a newer version than the replica's.
func (r *replicaActor) refuses(m changelog.Meta, seq uint64) error {
	want := r.cfg.stateVersion()
	if f := found(m.Version, m.Migrating); f > want {
		return &VersionError{Type: r.cfg.Type, Partition: r.cfg.Partition, Version: want, Found: f,
			Epoch: m.Epoch, Owner: m.Owner, Seq: seq}
	}
	return nil
}

// Err is why the replica stopped, after Done: nil for Stop, a *VersionError
// (ErrStateVersion) when the changelog holds state of a newer version than
// the replica's; nil while it runs.
func (r *Replica) Err() error {
	select {
	case <-r.ref.Done():
		return r.ref.Err()
	default:
		return nil
	}
}

// stopsForGood is the supervision decision of partition actors and hot
// replicas: a fence, state of a newer version or an input stream that is
// not the one the external store's offset belongs to stops them, anything
// else restarts them.
func stopsForGood(err error) bool {
	return errors.Is(err, ErrFenced) || errors.Is(err, ErrStateVersion) || errors.Is(err, ErrInputRecreated)
}
