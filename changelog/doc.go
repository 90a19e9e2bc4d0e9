// Package changelog is the source of truth of a partition's state store.
//
// Each (actor type, partition) has one JetStream stream, EDDY_CL_<type>_<p>, with
// MaxMsgsPerSubject=1 so that, like a compacted Kafka topic, only the latest record
// of each subject survives. Its subjects are
//
//	eddy.cl.<type>.<p>.<store>.<key>    a state-store value, or a tombstone (deletes)
//	eddy.cl.<type>.<p>._meta            {input offset, epoch, outbox forwarded mark}
//	eddy.cl.<type>.<p>._out.<off>.<n>   an outbox entry, purged once forwarded
//
// A partition actor commits one batch of records with a JetStream atomic batch
// publish (all of the batch lands, or none of it) whose first message carries
// Nats-Expected-Last-Sequence: the last changelog sequence the writer knows. A
// writer whose expected sequence is stale — because another owner wrote after it —
// gets ErrFenced and must not commit again until it has re-read the tail.
//
// Keys become subject tokens; keys that are not subject-safe are base64url-encoded
// (see EncodeKey). The package knows nothing of clusters or actors.
package changelog
