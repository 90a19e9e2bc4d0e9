package changelog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
)

var (
	// ErrFenced means the changelog holds a record this writer did not expect:
	// another owner (or an earlier attempt of this one) wrote after the sequence
	// the writer knew. The batch was not committed.
	ErrFenced = errors.New("changelog: fenced: wrong last sequence")
	// ErrTooLarge means a batch holds more records than one atomic batch may.
	ErrTooLarge = errors.New("changelog: batch too large")
	// ErrCommitUnknown means the outcome of a commit is unknown (for example the
	// server's acknowledgement did not arrive in time). The writer must re-read
	// the tail before writing again.
	ErrCommitUnknown = errors.New("changelog: commit outcome unknown")
)

// MaxBatch is the server's default limit of messages in one atomic batch
// (jetstream.limits.max_batch_size).
const MaxBatch = 1000

// wrongLastSequence is JetStream's error code for a failed
// Nats-Expected-Last-Sequence check.
const wrongLastSequence = 10071

// Writer commits batches of records to one changelog stream, atomically and
// fenced. It is not safe for concurrent use: a partition commits one batch at a time.
type Writer struct {
	nc       *nats.Conn
	subjects Subjects
	last     uint64
	maxBatch int
	msgs     []*nats.Msg
}

// NewWriter returns a writer that expects the changelog's last sequence to be
// last (the sequence its owner restored to).
func NewWriter(nc *nats.Conn, s Subjects, last uint64, maxBatch int) *Writer {
	if maxBatch <= 0 {
		maxBatch = MaxBatch
	}
	return &Writer{nc: nc, subjects: s, last: last, maxBatch: maxBatch}
}

// Last is the last changelog sequence this writer knows.
func (w *Writer) Last() uint64 { return w.last }

// Commit publishes recs as one atomic batch (a single record as a plain
// publish) whose first message expects the changelog's last sequence to be
// Last(). On success every record is in the
// changelog with consecutive sequences first..last, and Last() becomes last. On
// ErrFenced nothing of the batch is in the changelog. On ErrCommitUnknown it may
// or may not be: the caller must re-read the tail before committing again.
func (w *Writer) Commit(ctx context.Context, recs []Record) (first, last uint64, err error) {
	n := len(recs)
	if n == 0 {
		return 0, w.last, nil
	}
	if n > w.maxBatch {
		return 0, 0, fmt.Errorf("%w: %d records, limit %d", ErrTooLarge, n, w.maxBatch)
	}
	// One record needs no batch: a single publish is atomic, and skips the
	// server's staging of atomic batches (tens of ms under load, measured),
	// which matters for the epoch record a new owner writes before it starts.
	single := n == 1
	id := nuid.Next()
	w.msgs = w.msgs[:0]
	for i := range recs {
		m, err := w.subjects.Msg(&recs[i])
		if err != nil {
			return 0, 0, err
		}
		if !single {
			m.Header["Nats-Batch-Id"] = []string{id}
			m.Header["Nats-Batch-Sequence"] = []string{strconv.Itoa(i + 1)}
		}
		if i == 0 {
			m.Header["Nats-Expected-Last-Sequence"] = []string{strconv.FormatUint(w.last, 10)}
		}
		w.msgs = append(w.msgs, m)
	}
	for _, m := range w.msgs[:n-1] {
		if err := w.nc.PublishMsg(m); err != nil {
			return 0, 0, fmt.Errorf("%w: publish: %v", ErrCommitUnknown, err)
		}
	}
	commit := w.msgs[n-1]
	if !single {
		commit.Header["Nats-Batch-Commit"] = []string{"1"}
	}
	resp, err := w.nc.RequestMsgWithContext(ctx, commit)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: %v", ErrCommitUnknown, err)
	}
	var ack pubAck
	if err := json.Unmarshal(resp.Data, &ack); err != nil {
		return 0, 0, fmt.Errorf("%w: bad ack %q: %v", ErrCommitUnknown, resp.Data, err)
	}
	if ack.Error != nil {
		if ack.Error.ErrCode == wrongLastSequence {
			return 0, 0, fmt.Errorf("%w: expected %d: %s", ErrFenced, w.last, ack.Error.Description)
		}
		return 0, 0, fmt.Errorf("changelog %s: commit rejected: %s (err_code %d)",
			w.subjects.Stream(), ack.Error.Description, ack.Error.ErrCode)
	}
	if single && ack.Count == 0 && ack.Seq > 0 {
		ack.Count = 1 // a plain publish's ack has no count
	}
	if ack.Count != n {
		return 0, 0, fmt.Errorf("%w: ack counts %d of %d records", ErrCommitUnknown, ack.Count, n)
	}
	w.last = ack.Seq
	return ack.Seq - uint64(n) + 1, ack.Seq, nil
}

type pubAck struct {
	Stream string `json:"stream"`
	Seq    uint64 `json:"seq"`
	Batch  string `json:"batch"`
	Count  int    `json:"count"`
	Error  *struct {
		Code        int    `json:"code"`
		ErrCode     int    `json:"err_code"`
		Description string `json:"description"`
	} `json:"error"`
}
