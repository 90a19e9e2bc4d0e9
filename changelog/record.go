package changelog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Kind says what a Record holds.
type Kind uint8

const (
	// KindSet is a state-store value for a key.
	KindSet Kind = iota + 1
	// KindDelete is a tombstone: the key was deleted.
	KindDelete
	// KindMeta is the partition's {offset, epoch, forwarded} marker.
	KindMeta
	// KindOutbox is an entry to forward to another stream after the commit.
	KindOutbox
)

// Record is one change in a changelog: a value, a tombstone, an outbox
// entry or a meta record. A commit's records travel in one message, or in a
// few when they are too large for one (see Writer.Commit).
type Record struct {
	Kind  Kind
	Store string // KindSet, KindDelete
	Key   []byte // KindSet, KindDelete
	Value []byte // KindSet: the encoded value
	Meta  Meta   // KindMeta
	// KindOutbox: the entry, and the input offset and index that name it.
	Outbox Outbox
	// Time is when the stream stored the record, as a reader (Replay, a
	// tail) saw it; zero when writing.
	Time time.Time
	// Index is the record's place in its message (0 for the first), as a
	// reader saw it: with the message's sequence it names the record.
	Index int
}

// Meta is the partition's progress marker, committed as the last record of
// every batch. With Owner and Epoch it says who wrote the batch; with Batch,
// Prev and PrevBatch it links the batch to the one before it, so that a
// writer can tell its own batch from another's after an unknown outcome,
// and a reader can tell a changelog that continues what it has read from one
// that lost its tail and was written again (see Continues).
type Meta struct {
	// Offset is the input stream sequence of the last event whose effects are committed.
	Offset uint64 `msgpack:"o"`
	// Epoch is the owner epoch that wrote the batch.
	Epoch uint64 `msgpack:"e"`
	// Forwarded is the highest changelog sequence up to which every outbox entry
	// has been forwarded to its target stream.
	Forwarded uint64 `msgpack:"f"`
	// Owner names the process that wrote the batch: its epoch is assigned to
	// one owner, and one owner may write under it from several incarnations
	// of its partition actor, one after the other.
	Owner string `msgpack:"w,omitempty"`
	// Batch identifies the batch: random, set by Writer.Commit, and the same
	// for every attempt to commit the same batch, so at most one lands.
	Batch uint64 `msgpack:"b,omitempty"`
	// Prev is the changelog sequence the batch was fenced on (its
	// Nats-Expected-Last-Sequence): its first record is at Prev+1.
	Prev uint64 `msgpack:"p,omitempty"`
	// PrevBatch is the Batch of the meta record at Prev; 0 when there is none.
	PrevBatch uint64 `msgpack:"pb,omitempty"`
	// Version is the state version of the partition's stores (the actor
	// type's StateVersion) after the batch; 0 in records written before
	// versions were recorded, which means version 1.
	Version int `msgpack:"v,omitempty"`
	// Migrating, when not 0, is the version a migration in progress moves
	// the stores to: the keys up to MigratedThrough (local store keys,
	// store + 0x00 + key, in bytewise order) hold values of that version,
	// the others values of Version.
	Migrating       int    `msgpack:"mv,omitempty"`
	MigratedThrough string `msgpack:"mt,omitempty"`
	// RebuiltAt, when not 0, is the changelog sequence where the state was
	// last rebuilt from the input stream for a new version: no state record
	// before it belongs to the state. Rebuilding says that rebuild is in
	// progress; it has replayed the input through RebuiltThrough (Offset
	// stays the offset committed before it).
	RebuiltAt      uint64 `msgpack:"ra,omitempty"`
	Rebuilding     bool   `msgpack:"rb,omitempty"`
	RebuiltThrough uint64 `msgpack:"rt,omitempty"`
}

// Continues reports whether m, the next meta record a reader meets after
// the changelog position it holds (a store or replica that has applied the
// changelog up to the meta record at heldSeq, of batch heldBatch; 0 and 0
// for one that holds nothing), follows that position in one history. Every
// batch ends with its meta record and names the sequence it follows
// (Prev), and only Trim removes meta records, so the batches form a chain
// from the first (Prev 0). It returns false when m's batch follows another
// sequence: the records after heldSeq were trimmed (the reader must restore
// from a snapshot), or lost and written again (a server crash lost
// acknowledged writes); or when it follows heldSeq but another batch than
// heldBatch. A meta record without a batch id (written before batches were
// linked) or a held batch id of 0 is not compared.
func (m Meta) Continues(heldSeq, heldBatch uint64) bool {
	switch {
	case m.Batch == 0:
		return true // a batch written before batches were linked
	case m.Prev != heldSeq:
		return false
	}
	return heldBatch == 0 || m.PrevBatch == heldBatch
}

// Outbox is a message to publish to another stream once its batch is committed.
// MsgID deduplicates the forward in the target stream.
type Outbox struct {
	Offset  uint64            `msgpack:"-"`
	Index   int               `msgpack:"-"`
	Subject string            `msgpack:"s"`
	MsgID   string            `msgpack:"i"`
	Header  map[string]string `msgpack:"h,omitempty"`
	Data    []byte            `msgpack:"d"`
}

// outboxRecord is an outbox entry as the changelog holds it: with the
// input offset and index that name it.
type outboxRecord struct {
	Outbox `msgpack:",inline"`
	Offset uint64 `msgpack:"o"`
	Index  int    `msgpack:"n"`
}

// The subjects of a changelog, under eddy.cl.<type>.<p>: one for commits
// (a meta record and the records before it), one for the leading parts of
// commits too large for one message. The NATS server keeps state for two
// subjects per changelog, whatever the number of keys. Changelogs written
// by eddy 0.x before commits were framed hold one record a message on
// stateToken, metaToken and outToken; they are read as they are.
const (
	metaToken  = "_meta"
	partToken  = "_part"
	stateToken = "kv"
	outToken   = "_out"
)

// Subjects names the changelog of one (actor type, partition).
type Subjects struct {
	Type      string
	Partition int
	prefix    string // "eddy.cl.<type>.<p>."
}

// NewSubjects returns the subject layout of the changelog of (typ, partition).
func NewSubjects(typ string, partition int) Subjects {
	return Subjects{Type: typ, Partition: partition,
		prefix: "eddy.cl." + typ + "." + strconv.Itoa(partition) + "."}
}

// Stream is the changelog stream's name.
func (s Subjects) Stream() string { return streamPrefix + s.Type + "_" + strconv.Itoa(s.Partition) }

// streamPrefix starts the name of every changelog stream.
const streamPrefix = "EDDY_CL_"

// StreamPartition reports whether stream is a changelog stream of actor type
// typ (EDDY_CL_<typ>_<p>), and of which partition. A type whose name
// extends typ's ("bank_eu" for "bank") never matches: p is digits only.
func StreamPartition(stream, typ string) (p int, ok bool) {
	rest, found := strings.CutPrefix(stream, streamPrefix+typ+"_")
	if !found || rest == "" || strings.Trim(rest, "0123456789") != "" {
		return 0, false
	}
	p, err := strconv.Atoi(rest)
	return p, err == nil
}

// All is the filter that matches every subject of the changelog.
func (s Subjects) All() string { return s.prefix + ">" }

// Meta is the subject of the commits: each message holds one meta record
// and the records committed with it, so the newest message on it holds the
// newest meta record.
func (s Subjects) Meta() string { return s.prefix + metaToken }

// Parts is the subject of the leading parts of commits too large for one message.
func (s Subjects) Parts() string { return s.prefix + partToken }

// lastStore is the store name storeName returned last: a replay meets the
// same few names millions of times, and a string of each would be an
// allocation per record.
var lastStore atomic.Pointer[string]

// storeName returns b as a string, without allocating when it is the name
// returned last.
func storeName(b []byte) string {
	if p := lastStore.Load(); p != nil && *p == string(b) {
		return *p
	}
	s := string(b)
	lastStore.Store(&s)
	return s
}

// ErrBadRecord means a changelog message is not a record eddy wrote.
var ErrBadRecord = errors.New("changelog: malformed record")

// decodeState decodes a state record of the unframed layout, one a message.
func decodeState(subject string, data []byte) (Record, error) {
	bad := func(what string) (Record, error) {
		return Record{}, fmt.Errorf("changelog: %w: %s: %s", ErrBadRecord, subject, what)
	}
	if len(data) < 1 || (Kind(data[0]) != KindSet && Kind(data[0]) != KindDelete) {
		return bad("no record kind")
	}
	r := Record{Kind: Kind(data[0])}
	rest := data[1:]
	field := func() ([]byte, bool) {
		n, w := binary.Uvarint(rest)
		if w <= 0 || n > uint64(len(rest)-w) {
			return nil, false
		}
		f := rest[w : w+int(n)]
		rest = rest[w+int(n):]
		return f, true
	}
	store, ok := field()
	if !ok {
		return bad("truncated store name")
	}
	if r.Key, ok = field(); !ok {
		return bad("truncated key")
	}
	r.Store = storeName(store)
	if r.Kind == KindSet {
		r.Value = rest
	}
	return r, nil
}
