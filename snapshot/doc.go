// Package snapshot keeps snapshots of partition stores in a JetStream Object
// Store, so that a node without a local store or hot replica of a partition
// restores from the newest snapshot plus the changelog tail past it instead
// of replaying the whole changelog (restore path 4 of docs/restore-paths.md).
//
// A snapshot is a pebble checkpoint directory (statestore.Pebble.Checkpoint)
// uploaded to the bucket of its actor type, EDDY_SNAP_<type>:
//
//	files/<partition>/<sha256>                                 one object per file, named by its content
//	manifests/<partition>/<changelog id>/<changelog seq>-<nanos>  one JSON Manifest per snapshot
//
// A snapshot belongs to one changelog stream (its identity, the stream's
// creation time): a stream deleted and created again restarts its
// sequences, so its snapshots are told apart, never restored for the new
// one, and pruned once the new one has its own.
//
// Uploads are incremental: a checkpoint's table files are immutable, so a file
// whose sha256 the partition's prefix holds already is not uploaded again. The
// manifest is written last, so a failed upload leaves no manifest, only files
// that no manifest references; Prune removes them (after a grace period).
//
// Files are content-addressed per partition, not per bucket: only the
// partition's active owner uploads its snapshots, one at a time, and it prunes
// its own prefix, so garbage collection never races an upload of another
// partition. Two uploads of one partition can still overlap for a moment (a
// zombie owner during a failover); the grace period keeps the newer upload's
// files, and a manifest whose file went missing anyway is skipped by Download,
// which verifies every file's sha256 and falls back to the previous manifest.
//
// The package knows nothing of partitions' actors or clusters: the caller says
// what a Manifest is for and which ones it accepts.
package snapshot
