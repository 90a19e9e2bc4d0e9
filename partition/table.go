package partition

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/statestore"
	"github.com/eddyrt/eddy/table"
)

// Co-partitioned tables (Config.Tables).
//
// Partition p of an actor type materializes partition p of each of its
// tables: a stream laid out like an input stream, with the type's
// partition count. A table's records become writes of the batch, to the
// store TableStore(name), and the table's position (the last stream
// sequence applied) a write to the store tableOffsets: so they reach the
// changelog and the local store in the same commit as the input offset, a
// restore or a promoted hot replica has them, and a move carries them.
//
// The join rule: before an event runs, every record of its partition of
// the table stored no later than the event (by stream timestamp) is
// applied, and none stored after it. Which version of a record an event
// sees is then a function of the two streams' contents alone: the same
// after a crash, a restore or a move. (Timestamps are the stream leaders'
// clocks: with the input and the table on different servers of a cluster,
// their skew is the rule's precision.) Before each batch the actor asks for
// the last sequence of its partition of each table, so that it knows every
// record that can be older than the batch's events.

// tableOffsets is the store of the tables' positions: key the table name,
// value the last stream sequence applied (8 bytes, big endian).
const tableOffsets = ".tables"

// TableStore is the store that holds the values of table name.
func TableStore(name string) string { return "table." + name }

// isTableKey says whether a local store key is a table's (value or position).
func isTableKey(k []byte) bool {
	s := string(k)
	return strings.HasPrefix(s, "table.") || strings.HasPrefix(s, tableOffsets+"\x00")
}

// tableReader reads this partition of one table's stream.
type tableReader struct {
	in      Input
	stream  jetstream.Stream
	applied uint64 // the last sequence applied, in the batch being built or committed
	last    uint64 // the stream's last sequence of the partition, as of the batch
	it      jetstream.MessagesContext
	cancel  context.CancelFunc
	peek    jetstream.Msg // read, stored after the events processed so far
}

// openTables starts reading the tables from the positions the store holds.
func (a *partitionActor) openTables(ctx context.Context) error {
	for _, in := range a.cfg.Tables {
		off := uint64(0)
		v, err := a.store.Get([]byte(storeKey(tableOffsets, []byte(in.Type))))
		switch {
		case err == nil && len(v) == 8:
			off = binary.BigEndian.Uint64(v)
		case err != nil && !errors.Is(err, statestore.ErrNotFound):
			return fmt.Errorf("table %s: position: %w", in.Type, err)
		}
		st, err := a.cfg.JS.Stream(ctx, in.Type)
		if err != nil {
			return fmt.Errorf("table %s: %w", in.Type, err)
		}
		tctx, cancel := context.WithCancel(context.Background())
		cons, err := st.OrderedConsumer(tctx, jetstream.OrderedConsumerConfig{
			FilterSubjects:    []string{in.Filter(a.cfg.Partition)},
			DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
			OptStartSeq:       off + 1,
			InactiveThreshold: changelog.ConsumerInactiveThreshold,
		})
		if err != nil {
			cancel()
			return fmt.Errorf("table %s: consumer: %w", in.Type, err)
		}
		it, err := cons.Messages(jetstream.PullMaxMessages(a.cfg.BatchSize), jetstream.PullHeartbeat(changelog.ConsumerHeartbeat))
		if err != nil {
			cancel()
			return fmt.Errorf("table %s: consume: %w", in.Type, err)
		}
		a.tables = append(a.tables, &tableReader{in: in, stream: st, applied: off, it: it, cancel: cancel})
	}
	return nil
}

// closeTables stops the tables' consumers.
func (a *partitionActor) closeTables() {
	for _, t := range a.tables {
		t.it.Stop()
		t.cancel()
	}
	a.tables = nil
}

// refreshTables learns, before a batch, the last sequence of this
// partition of each table: every record stored before the batch's events
// is at or below it. While NATS does not answer it retries, from
// retryMinBackoff doubling to retryMaxBackoff (Status says retrying), until
// the actor is asked to stop (errAbandoned).
func (a *partitionActor) refreshTables(ctx context.Context) error {
	for _, t := range a.tables {
		wait := retryMinBackoff
		for {
			rctx, cancel := context.WithTimeout(ctx, min(a.cfg.CommitTimeout, retryReadTimeout))
			msg, err := t.stream.GetLastMsgForSubject(rctx, t.in.Filter(a.cfg.Partition))
			cancel()
			if err == nil || errors.Is(err, jetstream.ErrMsgNotFound) {
				t.last = 0
				if err == nil {
					t.last = msg.Sequence
				}
				if wait > retryMinBackoff {
					a.publishStatus(StateRunning)
				}
				break
			}
			a.status.setState(StateRetrying, fmt.Errorf("table %s: last record: %w", t.in.Type, err))
			if !a.sleep(ctx, &wait) {
				return errAbandoned
			}
		}
	}
	return nil
}

// advanceTables applies, before an event stored at ts, every record of the
// tables stored no later than it.
func (a *partitionActor) advanceTables(ctx context.Context, ts time.Time) error {
	for _, t := range a.tables {
		for t.applied < t.last {
			msg := t.peek
			if msg == nil {
				var err error
				msg, err = t.it.Next(jetstream.NextContext(ctx))
				if err != nil {
					return fmt.Errorf("table %s: read: %w", t.in.Type, err)
				}
			}
			md, err := msg.Metadata()
			if err != nil {
				return fmt.Errorf("table %s: metadata: %w", t.in.Type, err)
			}
			if md.Sequence.Stream <= t.applied {
				t.peek = nil
				continue // a redelivery of a recreated consumer
			}
			if md.Timestamp.After(ts) {
				t.peek = msg // for a later event
				break
			}
			t.peek = nil
			if a.records()+2 > a.cfg.MaxBatchRecords && len(a.writes) > 0 {
				if err := a.commitBatch(ctx); err != nil {
					return err
				}
			}
			a.applyTableRecord(t, msg.Subject(), msg.Headers(), msg.Data(), md.Sequence.Stream)
		}
	}
	return nil
}

// applyTableRecord adds a table record, and the table's new position, to
// the batch's writes. A record without a usable key, or whose value
// Config.CheckTableValue refuses, goes to the dead-letter stream in the
// same commit, once, and the table moves past it.
func (a *partitionActor) applyTableRecord(t *tableReader, subject string, h nats.Header, data []byte, seq uint64) {
	key, err := t.in.Key(a.cfg.Partition, subject, h)
	_, del := h[table.TombstoneHeader]
	del = del || h.Get("KV-Operation") == "DEL" || h.Get("KV-Operation") == "PURGE"
	if err == nil && !del && a.cfg.CheckTableValue != nil {
		err = a.cfg.CheckTableValue(data)
	}
	switch {
	case err != nil:
		a.tableDeadLetter(t.in.Type, subject, data, seq, err)
	case del:
		a.setWrite(write{key: storeKey(TableStore(t.in.Type), []byte(key)), del: true})
	default:
		a.setWrite(write{key: storeKey(TableStore(t.in.Type), []byte(key)), value: data})
	}
	a.setWrite(write{key: storeKey(tableOffsets, []byte(t.in.Type)), value: binary.BigEndian.AppendUint64(nil, seq)})
	t.applied = seq
}

// tableDeadLetter sends a table record the partition cannot take to the
// type's dead-letter stream, through the batch's outbox.
func (a *partitionActor) tableDeadLetter(tbl, subject string, data []byte, seq uint64, cause error) {
	if a.rebuilding {
		return // it went to the dead-letter stream the first time
	}
	a.m.deadLetters.Inc()
	a.log.Error("table record to dead-letter stream", "table", tbl, "seq", seq, "subject", subject, "err", cause)
	h := map[string]string{
		"Eddy-Error":     cause.Error(),
		"Eddy-Type":      a.cfg.Type,
		"Eddy-Partition": strconv.Itoa(a.cfg.Partition),
		"Eddy-Table":     tbl,
		"Eddy-Offset":    strconv.FormatUint(seq, 10),
		"Eddy-Subject":   subject,
	}
	a.outbox = append(a.outbox, changelog.Outbox{
		Offset: a.offset, Index: len(a.outbox), Subject: a.cfg.DLQSubject,
		MsgID: a.msgID(seq, "table-"+tbl), Header: h, Data: data,
	})
}

// setWrite adds w to the batch's write set (the last write of a key wins).
func (a *partitionActor) setWrite(w write) {
	if i, ok := a.ws[w.key]; ok {
		a.writes[i] = w
		return
	}
	a.ws[w.key] = len(a.writes)
	a.writes = append(a.writes, w)
}
