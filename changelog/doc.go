// Package changelog is the source of truth of a partition's state store.
//
// Each (actor type, partition) has one JetStream stream, EDDY_CL_<type>_<p>: a
// log of every change, with three subjects whatever the number of keys,
//
//	eddy.cl.<type>.<p>.kv      a state-store value, or a tombstone (deletes):
//	                           store, key and value in the message data
//	eddy.cl.<type>.<p>._meta   {input offset, epoch, outbox forwarded mark}, last of every batch
//	eddy.cl.<type>.<p>._out    an outbox entry, purged once forwarded
//
// so that the NATS server's memory does not grow with the keys (one subject per
// key cost a few hundred bytes each on every server, and a restart rebuilt that
// state). The log is not compacted: Trim removes what the partition's snapshots
// hold, so its size follows the changes since the older kept snapshot, and a
// restore is a snapshot plus the records after it.
//
// A partition actor commits one batch of records with a JetStream atomic batch
// publish (all of the batch lands, or none of it) whose first message carries
// Nats-Expected-Last-Sequence: the last changelog sequence the writer knows. A
// writer whose expected sequence is stale — because another owner wrote after it —
// gets ErrFenced and must not commit again until it has re-read the tail. Each
// batch's meta record names the sequence the batch follows (Meta.Prev), so a
// reader tells a changelog that continues what it holds from one that was
// trimmed or lost records past it (Meta.Continues).
//
// The package knows nothing of clusters or actors.
package changelog
