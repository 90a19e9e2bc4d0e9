package changelog

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
)

var (
	// ErrFenced means the changelog holds a record this writer did not expect:
	// another owner (or an earlier attempt of this one) wrote after the sequence
	// the writer knew. The batch was not committed.
	ErrFenced = errors.New("changelog: fenced: wrong last sequence")
	// ErrTooLarge means a commit's records need more messages than one
	// atomic batch may hold, or one record is larger than a message.
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
// (jetstream { limits { batch { max_msgs } } }): the most messages one
// commit may take.
const MaxBatch = 1000

// DefaultMaxMessage is the largest message a Writer publishes unless told
// otherwise: NATS's default max payload (1 MiB), less room for headers.
const DefaultMaxMessage = 1<<20 - msgHeadroom

// msgHeadroom is what a writer leaves of the connection's max payload for
// the headers of a commit's messages (batch id, sequence, expected last
// sequence: under 200 bytes).
const msgHeadroom = 1 << 10

// MaxMessage is the largest message data a Writer may publish on a
// connection whose server takes messages of up to maxPayload bytes
// (DefaultMaxMessage when unknown: 0).
func MaxMessage(maxPayload int64) int {
	switch {
	case maxPayload <= 0:
		return DefaultMaxMessage
	case maxPayload <= 2*msgHeadroom:
		return int(maxPayload / 2)
	}
	return int(maxPayload - msgHeadroom)
}

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
	maxMsgs  int
	maxBytes int

	// The messages of the batch being committed, and where its records are.
	msgs   []*nats.Msg
	buf    []byte // the framed records, one after the other
	ends   []int  // ends[i] is where record i ends in buf
	firsts []int  // firsts[j] is the first record of message j
	first  uint64 // the sequence of message 0, once the batch landed
}

// NewWriter returns a writer that expects the changelog to end at tail (the
// position its owner restored to). A commit takes at most maxMsgs messages
// (MaxBatch when 0) of at most maxBytes bytes each (DefaultMaxMessage when
// 0; see MaxMessage).
func NewWriter(conn Conn, s Subjects, tail Tail, maxMsgs, maxBytes int) *Writer {
	if maxMsgs <= 0 {
		maxMsgs = MaxBatch
	}
	if maxBytes <= 0 {
		maxBytes = DefaultMaxMessage
	}
	return &Writer{conn: conn, subjects: s, tail: tail, maxMsgs: maxMsgs, maxBytes: maxBytes}
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

// Commit publishes recs, whose last record must be a meta record, as one
// commit: one message on Subjects.Meta when they fit in one (a plain
// publish), else an atomic batch of parts and that message. The first
// message expects the changelog's last sequence to be Last(). Commit
// stamps the meta record with the batch's identity: Prev and PrevBatch from
// the writer's tail, and a new Batch id unless it has one — so committing
// the same records again after ErrCommitUnknown keeps the id, and at most
// one of the attempts lands (each expects the same last sequence).
//
// On success every record is in the changelog, in messages with
// consecutive sequences first..last (Position tells which record is where),
// and the writer's tail moves to last. On ErrFenced nothing of this attempt
// is in the changelog (an earlier attempt of the same batch may be). On
// ErrCommitUnknown it may or may not be: call Resolve. ErrTooLarge means
// the records need more messages than a commit may take, or one record
// alone is larger than a message.
func (w *Writer) Commit(ctx context.Context, recs []Record) (first, last uint64, err error) {
	if err := w.frame(recs); err != nil {
		return 0, 0, err
	}
	n := len(w.msgs)
	single := n == 1
	id := nuid.Next()
	for i, m := range w.msgs {
		m.Header = nats.Header{}
		if !single {
			m.Header["Nats-Batch-Id"] = []string{id}
			m.Header["Nats-Batch-Sequence"] = []string{strconv.Itoa(i + 1)}
		}
		if i == 0 {
			m.Header["Nats-Expected-Last-Sequence"] = []string{strconv.FormatUint(w.tail.Seq, 10)}
		}
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
		return 0, 0, fmt.Errorf("%w: ack counts %d of %d messages", ErrCommitUnknown, ack.Count, n)
	}
	w.landed(ack.Seq, recs)
	return w.first, ack.Seq, nil
}

// frame stamps recs' meta record and lays recs out in messages (w.msgs),
// each as large as maxBytes allows, the meta record in the last.
func (w *Writer) frame(recs []Record) error {
	n := len(recs)
	if n == 0 || recs[n-1].Kind != KindMeta {
		return errors.New("changelog: a commit's last record must be its meta record")
	}
	m := &recs[n-1].Meta
	if m.Batch == 0 {
		m.Batch = NewBatchID()
	}
	m.Prev, m.PrevBatch = w.tail.Seq, w.tail.Batch
	head, err := appendCommitHead(nil, m)
	if err != nil {
		return err
	}
	w.buf, w.ends, w.firsts, w.msgs = w.buf[:0], w.ends[:0], w.firsts[:0], w.msgs[:0]
	for i := range recs[:n-1] {
		if w.buf, err = appendRecord(w.buf, &recs[i]); err != nil {
			return err
		}
		w.ends = append(w.ends, len(w.buf))
	}
	// Parts, each as full as a message allows, while the rest does not fit
	// in the commit message with the meta record.
	start, from := 0, 0 // the first record and byte not in a part yet
	for len(head)+len(w.buf)-from > w.maxBytes {
		end := start
		for end < n-1 && 1+w.ends[end]-from <= w.maxBytes {
			end++
		}
		if end == start {
			if end == n-1 {
				return fmt.Errorf("%w: a meta record of %d bytes, the limit is %d", ErrTooLarge, len(head), w.maxBytes)
			}
			return fmt.Errorf("%w: record %d is %d bytes framed, a message at most %d", ErrTooLarge, start, w.ends[start]-from, w.maxBytes)
		}
		data := append(make([]byte, 0, 1+w.ends[end-1]-from), frameMagic)
		w.msgs = append(w.msgs, &nats.Msg{Subject: w.subjects.Parts(), Data: append(data, w.buf[from:w.ends[end-1]]...)})
		w.firsts = append(w.firsts, start)
		start, from = end, w.ends[end-1]
	}
	w.msgs = append(w.msgs, &nats.Msg{Subject: w.subjects.Meta(), Data: append(head, w.buf[from:]...)})
	w.firsts = append(w.firsts, start)
	if len(w.msgs) > w.maxMsgs {
		return fmt.Errorf("%w: %d records in %d messages, limit %d", ErrTooLarge, n, len(w.msgs), w.maxMsgs)
	}
	return nil
}

// landed moves the tail to the batch in w.msgs, which landed with its
// last message at last.
func (w *Writer) landed(last uint64, recs []Record) {
	w.first = last - uint64(len(w.msgs)) + 1
	w.tail = Tail{Seq: last, Batch: recs[len(recs)-1].Meta.Batch}
}

// Position is where record i of the batch that landed last (by Commit or
// Resolve) is: the sequence of its message and its place in it (see
// Record.Index). Together they name the record in the changelog.
func (w *Writer) Position(i int) (seq uint64, index int) {
	j := sort.Search(len(w.firsts), func(j int) bool { return w.firsts[j] > i }) - 1
	return w.first + uint64(j), i - w.firsts[j]
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
	if len(recs) == 0 || recs[len(recs)-1].Kind != KindMeta || recs[len(recs)-1].Meta.Batch == 0 || len(w.msgs) == 0 {
		return 0, 0, 0, errors.New("changelog: resolve: the batch has no meta record stamped by Commit")
	}
	n := uint64(len(w.msgs))
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
	// Something landed after the tail: the batch, if its commit message
	// is at tail+n with its id.
	raw, ok, err := getMsg(ctx, w.conn, w.subjects.Stream(), msgGetRequest{Seq: w.tail.Seq + n})
	if err != nil {
		return 0, 0, 0, err
	}
	if ok && raw.Subject == w.subjects.Meta() {
		m, err := DecodeMeta(raw.Data)
		if err == nil && m.Batch == recs[len(recs)-1].Meta.Batch {
			w.landed(raw.Seq, recs)
			return Landed, w.first, raw.Seq, nil
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
