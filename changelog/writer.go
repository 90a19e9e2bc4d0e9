package changelog

import (
	"context"
	"crypto/rand"
	"encoding/binary"
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
	// ErrCommitUnknown means the outcome of a commit is unknown: the
	// acknowledgement did not arrive (a timeout, a lost connection, no
	// responders while a stream leader is elected) or the server refused the
	// batch for a reason that may pass. The batch may land later. Resolve
	// tells what the changelog holds; committing the same records again is
	// safe, as at most one attempt of a batch can land.
	ErrCommitUnknown = errors.New("changelog: commit outcome unknown")
)

// MaxBatch is the server's default limit of messages in one atomic batch
// (jetstream { limits { batch { max_msgs } } }).
const MaxBatch = 1000

// wrongLastSequence is JetStream's error code for a failed
// Nats-Expected-Last-Sequence check.
const wrongLastSequence = 10071

// Conn is what a Writer needs of a NATS connection; *nats.Conn has it.
// Tests wrap one to lose acknowledgements or delay batches.
type Conn interface {
	PublishMsg(m *nats.Msg) error
	RequestMsgWithContext(ctx context.Context, m *nats.Msg) (*nats.Msg, error)
	RequestWithContext(ctx context.Context, subject string, data []byte) (*nats.Msg, error)
}

var _ Conn = (*nats.Conn)(nil)

// Tail is where a changelog ends as a writer's owner restored it: the last
// sequence and the batch id of the meta record there.
type Tail struct {
	// Seq is the changelog's last sequence (0 for an empty changelog).
	Seq uint64
	// Batch is the Meta.Batch of the record at Seq (0 when unknown or none).
	Batch uint64
}

// Writer commits batches of records to one changelog stream, atomically and
// fenced. It is not safe for concurrent use: a partition commits one batch at a time.
type Writer struct {
	conn     Conn
	subjects Subjects
	tail     Tail
	maxBatch int
	msgs     []*nats.Msg
}

// NewWriter returns a writer that expects the changelog to end at tail (the
// position its owner restored to).
func NewWriter(conn Conn, s Subjects, tail Tail, maxBatch int) *Writer {
	if maxBatch <= 0 {
		maxBatch = MaxBatch
	}
	return &Writer{conn: conn, subjects: s, tail: tail, maxBatch: maxBatch}
}

// Last is the last changelog sequence this writer knows.
func (w *Writer) Last() uint64 { return w.tail.Seq }

// Tail is where the writer expects the changelog to end.
func (w *Writer) Tail() Tail { return w.tail }

// NewBatchID returns a random, non-zero batch id.
func NewBatchID() uint64 {
	var b [8]byte
	for {
		_, _ = rand.Read(b[:])
		if id := binary.BigEndian.Uint64(b[:]); id != 0 {
			return id
		}
	}
}

// Commit publishes recs as one atomic batch (a single record as a plain
// publish) whose first message expects the changelog's last sequence to be
// Last(). When the last record is a meta record, Commit stamps it with the
// batch's identity: Prev and PrevBatch from the writer's tail, and a new
// Batch id unless it has one — so committing the same records again after
// ErrCommitUnknown keeps the id, and at most one of the attempts lands (each
// expects the same last sequence).
//
// On success every record is in the changelog with consecutive sequences
// first..last, and the writer's tail moves there. On ErrFenced nothing of
// this attempt is in the changelog (an earlier attempt of the same batch may
// be). On ErrCommitUnknown it may or may not be: call Resolve.
func (w *Writer) Commit(ctx context.Context, recs []Record) (first, last uint64, err error) {
	n := len(recs)
	if n == 0 {
		return 0, w.tail.Seq, nil
	}
	if n > w.maxBatch {
		return 0, 0, fmt.Errorf("%w: %d records, limit %d", ErrTooLarge, n, w.maxBatch)
	}
	var batch uint64
	if m := &recs[n-1]; m.Kind == KindMeta {
		if m.Meta.Batch == 0 {
			m.Meta.Batch = NewBatchID()
		}
		m.Meta.Prev, m.Meta.PrevBatch = w.tail.Seq, w.tail.Batch
		batch = m.Meta.Batch
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
			m.Header["Nats-Expected-Last-Sequence"] = []string{strconv.FormatUint(w.tail.Seq, 10)}
		}
		w.msgs = append(w.msgs, m)
	}
	for _, m := range w.msgs[:n-1] {
		if err := w.conn.PublishMsg(m); err != nil {
			return 0, 0, fmt.Errorf("%w: publish: %v", ErrCommitUnknown, err)
		}
	}
	commit := w.msgs[n-1]
	if !single {
		commit.Header["Nats-Batch-Commit"] = []string{"1"}
	}
	resp, err := w.conn.RequestMsgWithContext(ctx, commit)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: %v", ErrCommitUnknown, err)
	}
	var ack pubAck
	if err := json.Unmarshal(resp.Data, &ack); err != nil {
		return 0, 0, fmt.Errorf("%w: bad ack %q: %v", ErrCommitUnknown, resp.Data, err)
	}
	if ack.Error != nil {
		if ack.Error.ErrCode == wrongLastSequence {
			return 0, 0, fmt.Errorf("%w: expected %d: %s", ErrFenced, w.tail.Seq, ack.Error.Description)
		}
		// Stream unavailable, leader changing, batch abandoned: the server
		// did not store this attempt, but an earlier one may still land.
		return 0, 0, fmt.Errorf("%w: %s rejected the batch: %s (err_code %d)",
			ErrCommitUnknown, w.subjects.Stream(), ack.Error.Description, ack.Error.ErrCode)
	}
	if single && ack.Count == 0 && ack.Seq > 0 {
		ack.Count = 1 // a plain publish's ack has no count
	}
	if ack.Count != n {
		return 0, 0, fmt.Errorf("%w: ack counts %d of %d records", ErrCommitUnknown, ack.Count, n)
	}
	w.tail = Tail{Seq: ack.Seq, Batch: batch}
	return ack.Seq - uint64(n) + 1, ack.Seq, nil
}

// Outcome is what the changelog holds of a batch whose commit had an
// unknown outcome (see Writer.Resolve).
type Outcome int

const (
	// NotLanded: the changelog still ends where the writer expects. The
	// batch may land later, so commit the same records again (at most one
	// attempt lands).
	NotLanded Outcome = iota
	// Landed: the batch is in the changelog; the writer's tail has moved to it.
	Landed
	// Moved: another batch landed where the writer expected to write. It
	// may be an earlier incarnation's of the same owner, or a newer owner's:
	// read the last meta record to know which.
	Moved
	// Behind: the changelog ends before the writer's tail. It lost records
	// that were acknowledged (a server crashed before it synced them to
	// disk), or it was purged: whoever restores must discard what it holds
	// past the changelog's end.
	Behind
)

func (o Outcome) String() string {
	switch o {
	case NotLanded:
		return "not landed"
	case Landed:
		return "landed"
	case Moved:
		return "moved"
	case Behind:
		return "behind"
	}
	return "Outcome(" + strconv.Itoa(int(o)) + ")"
}

// Resolve reads, from the stream leader, what the changelog holds of recs,
// a batch whose Commit failed with ErrCommitUnknown (or with ErrFenced after
// an earlier attempt had an unknown outcome). For Landed it returns the
// sequences the batch landed at, and the writer's tail moves there. An error
// means the changelog could not be read (NATS away): try again later.
func (w *Writer) Resolve(ctx context.Context, recs []Record) (o Outcome, first, last uint64, err error) {
	n := uint64(len(recs))
	if n == 0 || recs[n-1].Kind != KindMeta || recs[n-1].Meta.Batch == 0 {
		return 0, 0, 0, errors.New("changelog: resolve: the batch has no meta record stamped by Commit")
	}
	end, err := LastSequence(ctx, w.conn, w.subjects)
	if err != nil {
		return 0, 0, 0, err
	}
	switch {
	case end == w.tail.Seq:
		return NotLanded, 0, 0, nil
	case end < w.tail.Seq:
		return Behind, 0, 0, nil
	}
	// Something landed after the tail: the batch, if its meta record is at
	// tail+n with its id.
	raw, ok, err := getMsg(ctx, w.conn, w.subjects.Stream(), msgGetRequest{Seq: w.tail.Seq + n})
	if err != nil {
		return 0, 0, 0, err
	}
	if ok && raw.Subject == w.subjects.Meta() {
		rec, err := w.subjects.Decode(raw.Subject, nil, raw.Data)
		if err == nil && rec.Meta.Batch == recs[n-1].Meta.Batch {
			first = w.tail.Seq + 1
			w.tail = Tail{Seq: raw.Seq, Batch: rec.Meta.Batch}
			return Landed, first, raw.Seq, nil
		}
	}
	return Moved, 0, 0, nil
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
