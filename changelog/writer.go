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
	"sync"
	"sync/atomic"

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

// JetStream's error codes for a failed Nats-Expected-Last-Sequence and
// Nats-Expected-Last-Msg-Id check.
const (
	wrongLastSequence = 10071
	wrongLastMsgID    = 10070
)

// Conn is what a Writer needs of a NATS connection; *nats.Conn has it.
// Tests wrap one to lose acknowledgements or delay commits: a commit's last
// message is the one published with a reply subject.
type Conn interface {
	PublishMsg(m *nats.Msg) error
	RequestWithContext(ctx context.Context, subject string, data []byte) (*nats.Msg, error)
	Subscribe(subject string, cb nats.MsgHandler) (*nats.Subscription, error)
	NewRespInbox() string
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
// fenced. It is not safe for concurrent use (a partition actor owns one).
// Send publishes a commit without waiting for its acknowledgement, and Wait
// collects the acknowledgements in the order of sending.
//
// A pipelined writer (Pipeline) may send a commit while the one before is
// in flight: the commit expects the sequence that one lands at, and that
// that one is the changelog's last message (Nats-Expected-Last-Msg-Id: each
// commit of a pipelined writer carries a Nats-Msg-Id). So it lands only
// right after the commit ahead of it: never after another owner's commit,
// even one that landed at the sequence it expects. JetStream refuses that
// check in an atomic batch, so only a single-message commit goes behind
// another (ErrNotPipelined).
type Writer struct {
	conn      Conn
	subjects  Subjects
	tail      Tail   // where the changelog ends, as far as acknowledged
	next      Tail   // where it ends once every commit sent lands
	nextID    string // the message id of the last commit sent (pipelined)
	pipelined bool
	maxMsgs   int
	maxBytes  int

	inbox   string // the reply subjects' prefix: inbox.<n>
	sub     *nats.Subscription
	replies atomic.Uint64 // the last reply token used
	notify  func()

	mu      sync.Mutex
	waiting map[string]chan *nats.Msg // the attempts in flight, by reply subject
}

// NewWriter returns a writer that expects the changelog to end at tail (the
// position its owner restored to). A commit takes at most maxMsgs messages
// (MaxBatch when 0) of at most maxBytes bytes each (DefaultMaxMessage when
// 0; see MaxMessage). Close releases it.
func NewWriter(conn Conn, s Subjects, tail Tail, maxMsgs, maxBytes int) *Writer {
	if maxMsgs <= 0 {
		maxMsgs = MaxBatch
	}
	if maxBytes <= 0 {
		maxBytes = DefaultMaxMessage
	}
	return &Writer{conn: conn, subjects: s, tail: tail, next: tail, maxMsgs: maxMsgs, maxBytes: maxBytes,
		waiting: make(map[string]chan *nats.Msg)}
}

// ErrNotPipelined means a commit cannot be sent while another is in
// flight: the writer is not pipelined, or the commit takes more than one
// message. Wait for the commits in flight, then send it.
var ErrNotPipelined = errors.New("changelog: a commit goes behind another only as one message of a pipelined writer")

// Pipeline lets commits be sent while others are in flight (see Writer):
// from now on each commit carries a message id.
func (w *Writer) Pipeline() { w.pipelined = true }

// Notify sets f to run whenever the answer to a commit arrives. It runs on
// a NATS goroutine and must not block; a partition actor sends itself a
// message.
func (w *Writer) Notify(f func()) { w.notify = f }

// Close stops taking acknowledgements: commits in flight stay unknown.
func (w *Writer) Close() {
	if w.sub != nil {
		_ = w.sub.Unsubscribe()
		w.sub = nil
	}
}

// Last is the last changelog sequence this writer knows landed.
func (w *Writer) Last() uint64 { return w.tail.Seq }

// Tail is where the writer knows the changelog ends.
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

// Commit is one batch of records framed as changelog messages, sent by
// Writer.Send, and where it landed once known.
type Commit struct {
	msgs   []*nats.Msg
	ends   []int // ends[i] is where record i ends in the framed records
	firsts []int // firsts[j] is the first record of message j
	expect Tail  // where the changelog ends before it: its expected last sequence
	batch  uint64
	id     string // its Nats-Msg-Id (a pipelined writer's)
	// behind is the message id of the commit in flight it was sent behind:
	// that commit must be the changelog's last message.
	behind string
	first  uint64 // the sequence of message 0, once it landed
	last   uint64
	reply  string         // the reply subject of the attempt in flight
	ack    chan *nats.Msg // its answer
}

// Messages is how many messages the commit takes: 1, or parts and a commit message.
func (c *Commit) Messages() int { return len(c.msgs) }

// Expect is where the changelog ends before the commit: the sequence its
// first message expects to be last.
func (c *Commit) Expect() Tail { return c.expect }

// Answered tells whether the answer to the attempt in flight arrived: Wait
// then returns at once.
func (c *Commit) Answered() bool { return len(c.ack) > 0 }

// Landed is where the commit landed: its first and last sequences (0, 0
// until Wait or Resolve saw it land).
func (c *Commit) Landed() (first, last uint64) { return c.first, c.last }

// Position is where record i of the commit landed: the sequence of its
// message and its place in it (see Record.Index). Together they name the
// record in the changelog.
func (c *Commit) Position(i int) (seq uint64, index int) {
	j := sort.Search(len(c.firsts), func(j int) bool { return c.firsts[j] > i }) - 1
	return c.first + uint64(j), i - c.firsts[j]
}

func (c *Commit) landed(last uint64) {
	c.first, c.last = last-uint64(len(c.msgs))+1, last
}

// Commit frames recs (see Frame), sends them (see Send) and waits for the
// acknowledgement (see Wait). The Commit is returned with the errors of
// Send and Wait, for Resolve.
func (w *Writer) Commit(ctx context.Context, recs []Record) (*Commit, error) {
	c, err := w.Frame(recs)
	if err != nil {
		return nil, err
	}
	if err = w.Send(c); err == nil {
		err = w.Wait(ctx, c)
	}
	return c, err
}

// Frame lays recs, whose last record must be a meta record, out as a
// commit that follows every commit sent so far: one message on
// Subjects.Meta when they fit in one, else parts and that message. It
// stamps the meta record with the commit's identity: Prev and PrevBatch
// from where those commits end, and a new Batch id unless it has one.
// ErrTooLarge means the records need more messages than a commit may take,
// or one record alone is larger than a message.
func (w *Writer) Frame(recs []Record) (*Commit, error) { return w.frame(recs) }

// Send publishes c, the last commit framed, and returns without waiting for
// its acknowledgement: a plain publish of one message, or an atomic batch
// of its parts and its commit message. Its first message expects the
// changelog's last sequence to be where the commits sent before end; sent
// while one of them is in flight, it also expects that one to be the last
// message (see Writer), and ErrNotPipelined refuses it unless the writer
// is pipelined and c is one message.
//
// An error wrapping ErrCommitUnknown means the publish failed (NATS away):
// Wait, Resolve and Retry take c as any other.
func (w *Writer) Send(c *Commit) error {
	if c.expect != w.next {
		return errors.New("changelog: send: the commit was not framed after the last one sent")
	}
	if w.next != w.tail {
		if !w.pipelined || len(c.msgs) > 1 {
			return ErrNotPipelined
		}
		c.behind = w.nextID
	}
	if w.sub == nil {
		w.inbox = w.conn.NewRespInbox()
		sub, err := w.conn.Subscribe(w.inbox+".*", w.answer)
		if err != nil {
			return fmt.Errorf("changelog: subscribe to acknowledgements: %w", err)
		}
		w.sub = sub
	}
	w.next, w.nextID = Tail{Seq: c.expect.Seq + uint64(len(c.msgs)), Batch: c.batch}, c.id
	return w.publish(c)
}

// Retry publishes c again, as it was framed: it expects the same last
// sequence, so at most one of its attempts lands. Call it for a commit
// whose outcome Resolve found NotLanded; then Wait.
func (w *Writer) Retry(c *Commit) error { return w.publish(c) }

func (w *Writer) publish(c *Commit) error {
	w.mu.Lock()
	delete(w.waiting, c.reply)
	c.reply = w.inbox + "." + strconv.FormatUint(w.replies.Add(1), 10)
	c.ack = make(chan *nats.Msg, 1)
	w.waiting[c.reply] = c.ack
	w.mu.Unlock()
	n := len(c.msgs)
	id := nuid.Next()
	for i, framed := range c.msgs {
		// Each attempt is new messages: a connection may hold on to an
		// earlier attempt's (tests hold them back).
		m := &nats.Msg{Subject: framed.Subject, Data: framed.Data, Header: nats.Header{}}
		if n > 1 {
			m.Header["Nats-Batch-Id"] = []string{id}
			m.Header["Nats-Batch-Sequence"] = []string{strconv.Itoa(i + 1)}
		}
		if i == 0 {
			m.Header["Nats-Expected-Last-Sequence"] = []string{strconv.FormatUint(c.expect.Seq, 10)}
			if c.behind != "" {
				m.Header["Nats-Expected-Last-Msg-Id"] = []string{c.behind}
			}
		}
		if i == n-1 {
			if n > 1 {
				m.Header["Nats-Batch-Commit"] = []string{"1"}
			}
			if c.id != "" {
				m.Header["Nats-Msg-Id"] = []string{c.id}
			}
			m.Reply = c.reply
		}
		if err := w.conn.PublishMsg(m); err != nil {
			return fmt.Errorf("%w: publish: %v", ErrCommitUnknown, err)
		}
	}
	return nil
}

// answer takes the answer to a commit's attempt (on a NATS goroutine).
func (w *Writer) answer(m *nats.Msg) {
	w.mu.Lock()
	ch := w.waiting[m.Subject]
	delete(w.waiting, m.Subject)
	w.mu.Unlock()
	if ch == nil {
		return // an attempt given up on
	}
	ch <- m // the only answer to this attempt's reply subject
	if w.notify != nil {
		w.notify()
	}
}

// Wait waits for the answer to c, the oldest commit sent and not yet
// waited for, until ctx ends. On success every record of c is in the
// changelog, in messages with consecutive sequences (Landed and Position
// tell where), and the writer's tail moves there. On ErrFenced nothing of
// this attempt is in the changelog (an earlier attempt of the same commit
// may be; and a commit sent while another was in flight is refused when
// that one did not land first). On ErrCommitUnknown it may or may not be:
// call Resolve.
func (w *Writer) Wait(ctx context.Context, c *Commit) error {
	var resp *nats.Msg
	select {
	case resp = <-c.ack:
	case <-ctx.Done():
		w.mu.Lock()
		delete(w.waiting, c.reply)
		w.mu.Unlock()
		return fmt.Errorf("%w: %v", ErrCommitUnknown, ctx.Err())
	}
	if len(resp.Data) == 0 && resp.Header.Get("Status") == "503" {
		return fmt.Errorf("%w: %v", ErrCommitUnknown, nats.ErrNoResponders)
	}
	var ack pubAck
	if err := json.Unmarshal(resp.Data, &ack); err != nil {
		return fmt.Errorf("%w: bad ack %q: %v", ErrCommitUnknown, resp.Data, err)
	}
	if ack.Error != nil {
		if ack.Error.ErrCode == wrongLastSequence || ack.Error.ErrCode == wrongLastMsgID {
			return fmt.Errorf("%w: expected %d: %s", ErrFenced, c.expect.Seq, ack.Error.Description)
		}
		// Stream unavailable, leader changing, batch abandoned: the server
		// did not store this attempt, but an earlier one may still land.
		return fmt.Errorf("%w: %s rejected the batch: %s (err_code %d)",
			ErrCommitUnknown, w.subjects.Stream(), ack.Error.Description, ack.Error.ErrCode)
	}
	n := len(c.msgs)
	if n == 1 && ack.Count == 0 && ack.Seq > 0 {
		ack.Count = 1 // a plain publish's ack has no count
	}
	if ack.Count != n {
		return fmt.Errorf("%w: ack counts %d of %d messages", ErrCommitUnknown, ack.Count, n)
	}
	w.landed(c, ack.Seq)
	return nil
}

// landed moves the tail to c, which landed with its last message at last.
func (w *Writer) landed(c *Commit, last uint64) {
	c.landed(last)
	w.tail = Tail{Seq: last, Batch: c.batch}
	if w.next.Seq < last {
		w.next = w.tail
	}
}

// frame stamps recs' meta record and lays recs out in messages, each as
// large as maxBytes allows, the meta record in the last.
func (w *Writer) frame(recs []Record) (*Commit, error) {
	n := len(recs)
	if n == 0 || recs[n-1].Kind != KindMeta {
		return nil, errors.New("changelog: a commit's last record must be its meta record")
	}
	m := &recs[n-1].Meta
	if m.Batch == 0 {
		m.Batch = NewBatchID()
	}
	m.Prev, m.PrevBatch = w.next.Seq, w.next.Batch
	head, err := appendCommitHead(nil, m)
	if err != nil {
		return nil, err
	}
	c := &Commit{expect: w.next, batch: m.Batch}
	if w.pipelined {
		c.id = w.subjects.Stream() + "/" + strconv.FormatUint(m.Batch, 16)
	}
	var buf []byte // the framed records, one after the other
	for i := range recs[:n-1] {
		if buf, err = appendRecord(buf, &recs[i]); err != nil {
			return nil, err
		}
		c.ends = append(c.ends, len(buf))
	}
	// Parts, each as full as a message allows, while the rest does not fit
	// in the commit message with the meta record.
	start, from := 0, 0 // the first record and byte not in a part yet
	for len(head)+len(buf)-from > w.maxBytes {
		end := start
		for end < n-1 && 1+c.ends[end]-from <= w.maxBytes {
			end++
		}
		if end == start {
			if end == n-1 {
				return nil, fmt.Errorf("%w: a meta record of %d bytes, the limit is %d", ErrTooLarge, len(head), w.maxBytes)
			}
			return nil, fmt.Errorf("%w: record %d is %d bytes framed, a message at most %d", ErrTooLarge, start, c.ends[start]-from, w.maxBytes)
		}
		data := append(make([]byte, 0, 1+c.ends[end-1]-from), frameMagic)
		c.msgs = append(c.msgs, &nats.Msg{Subject: w.subjects.Parts(), Data: append(data, buf[from:c.ends[end-1]]...)})
		c.firsts = append(c.firsts, start)
		start, from = end, c.ends[end-1]
	}
	c.msgs = append(c.msgs, &nats.Msg{Subject: w.subjects.Meta(), Data: append(head, buf[from:]...)})
	c.firsts = append(c.firsts, start)
	if len(c.msgs) > w.maxMsgs {
		return nil, fmt.Errorf("%w: %d records in %d messages, limit %d", ErrTooLarge, n, len(c.msgs), w.maxMsgs)
	}
	return c, nil
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

// Resolve reads, from the stream leader, what the changelog holds of c, a
// commit whose Wait failed with ErrCommitUnknown (or with ErrFenced after an
// attempt had an unknown outcome, or after it was sent behind a commit that
// had). Every commit sent before c must have landed. For Landed the writer's
// tail moves to c (see Landed). An error means the changelog could not be
// read (NATS away): try again later.
func (w *Writer) Resolve(ctx context.Context, c *Commit) (Outcome, error) {
	if c.expect != w.tail {
		return 0, fmt.Errorf("changelog: resolve: the commit expects sequence %d, the writer knows %d landed", c.expect.Seq, w.tail.Seq)
	}
	end, err := LastSequence(ctx, w.conn, w.subjects)
	if err != nil {
		return 0, err
	}
	switch {
	case end == c.expect.Seq:
		return NotLanded, nil
	case end < c.expect.Seq:
		return Behind, nil
	}
	// Something landed after the tail: the commit, if its commit message
	// is at tail+n with its id.
	raw, ok, err := getMsg(ctx, w.conn, w.subjects.Stream(), msgGetRequest{Seq: c.expect.Seq + uint64(len(c.msgs))})
	if err != nil {
		return 0, err
	}
	if ok && raw.Subject == w.subjects.Meta() {
		m, err := DecodeMeta(raw.Data)
		if err == nil && m.Batch == c.batch {
			w.landed(c, raw.Seq)
			return Landed, nil
		}
	}
	return Moved, nil
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
