// Package changelog is the source of truth of a partition's state store.
//
// Each (actor type, partition) has one JetStream stream, EDDY_CL_<type>_<p>: a
// log of commits, on two subjects whatever the number of keys,
//
//	eddy.cl.<type>.<p>._meta   a commit: its meta record {input offset, epoch,
//	                           outbox forwarded mark, ...}, then its records
//	                           (state-store values, tombstones, outbox entries)
//	eddy.cl.<type>.<p>._part   the leading records of a commit too large for one message
//
// so that the NATS server's memory does not grow with the keys (one subject per
// key cost a few hundred bytes each on every server, and a restart rebuilt that
// state). frame.go has the layout of a message. The log is not compacted: Trim
// removes what the partition's snapshots hold, so its size follows the changes
// since the older kept snapshot, and a restore is a snapshot plus the records
// after it.
//
// A Writer commits a batch of records as one message, published with
// Nats-Expected-Last-Sequence: the last changelog sequence the writer knows
// (or, for a commit sent while the one before it is in flight, the sequence
// that one lands at: see Writer). Acknowledgements come back on a reply
// subject of the writer's own (Writer.Wait).
// A batch larger than a message goes as a JetStream atomic batch of parts and
// the commit message (all of it lands, or none), the first part carrying the
// expected sequence. A writer whose expected sequence is stale — because
// another owner wrote after it — gets ErrFenced and must not commit again
// until it has re-read the tail. Each batch's meta record names the sequence
// the batch follows (Meta.Prev), so a reader tells a changelog that continues
// what it holds from one that was trimmed or lost records past it
// (Meta.Continues).
//
// The package knows nothing of clusters or actors.
package changelog
