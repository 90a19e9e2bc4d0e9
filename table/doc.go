// Package table materializes streams as tables.
//
// A state store is what a handler reads and writes. A table is a read-only,
// materialized view of a stream: the latest value of each key, with deletes
// by tombstone. A global table is a table of all partitions of a stream,
// kept on every node (Global).
//
// The package knows nothing of clusters or actors.
package table
