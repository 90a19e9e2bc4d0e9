package changelog

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"
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

// Record is one changelog message.
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

// Continues reports whether m, the first meta record a reader meets after
// the changelog position it holds (a store or replica that has applied the
// changelog up to a meta record at heldSeq with batch id heldBatch), can
// follow that position in one history. It returns false when the batch of m
// starts before heldSeq, or right after it but after another batch: the
// changelog the reader holds was lost after heldSeq (a server crash lost
// acknowledged writes, say) and then written again differently. A reader
// that has met no meta record yet (heldSeq 0) accepts anything; so does one
// whose held batch id is unknown (0, older stores) when Prev equals heldSeq.
// A true result does not prove one history when meta records between were
// compacted away.
func (m Meta) Continues(heldSeq, heldBatch uint64) bool {
	switch {
	case heldSeq == 0 || m.Batch == 0:
		return true // nothing to compare with, or a batch written before batches were linked
	case m.Prev < heldSeq:
		return false
	case m.Prev == heldSeq:
		return heldBatch == 0 || m.PrevBatch == heldBatch
	}
	return true
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

const (
	hdrOp     = "Eddy-Op"
	opDelete  = "del"
	metaToken = "_meta"
	outToken  = "_out"
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

// Meta is the subject of the meta records.
func (s Subjects) Meta() string { return s.prefix + metaToken }

// Outboxes is the filter matching every outbox entry.
func (s Subjects) Outboxes() string { return s.prefix + outToken + ".>" }

// Msg encodes r as a NATS message for this changelog.
func (s Subjects) Msg(r *Record) (*nats.Msg, error) {
	m := &nats.Msg{Header: nats.Header{}}
	switch r.Kind {
	case KindSet, KindDelete:
		b := make([]byte, 0, len(s.prefix)+len(r.Store)+1+len(r.Key)*4/3+2)
		b = append(b, s.prefix...)
		b = append(b, r.Store...)
		b = append(b, '.')
		m.Subject = string(AppendKey(b, r.Key))
		if r.Kind == KindDelete {
			m.Header[hdrOp] = []string{opDelete}
		} else {
			m.Data = r.Value
		}
	case KindMeta:
		m.Subject = s.Meta()
		data, err := msgpack.Marshal(&r.Meta)
		if err != nil {
			return nil, fmt.Errorf("encode meta: %w", err)
		}
		m.Data = data
	case KindOutbox:
		m.Subject = s.prefix + outToken + "." + strconv.FormatUint(r.Outbox.Offset, 10) + "." + strconv.Itoa(r.Outbox.Index)
		data, err := msgpack.Marshal(&r.Outbox)
		if err != nil {
			return nil, fmt.Errorf("encode outbox entry: %w", err)
		}
		m.Data = data
	default:
		return nil, fmt.Errorf("changelog: unknown record kind %d", r.Kind)
	}
	return m, nil
}

// Decode parses a message of this changelog back into a Record. Key and Value
// alias subject and data where possible; copy them to keep them past the message.
func (s Subjects) Decode(subject string, header nats.Header, data []byte) (Record, error) {
	rest, ok := strings.CutPrefix(subject, s.prefix)
	if !ok {
		return Record{}, fmt.Errorf("changelog: subject %q is not in %s", subject, s.Stream())
	}
	switch {
	case rest == metaToken:
		var r Record
		r.Kind = KindMeta
		if err := msgpack.Unmarshal(data, &r.Meta); err != nil {
			return Record{}, fmt.Errorf("changelog: decode meta: %w", err)
		}
		return r, nil
	case strings.HasPrefix(rest, outToken+"."):
		var r Record
		r.Kind = KindOutbox
		if err := msgpack.Unmarshal(data, &r.Outbox); err != nil {
			return Record{}, fmt.Errorf("changelog: decode outbox entry: %w", err)
		}
		parts := strings.Split(rest[len(outToken)+1:], ".")
		if len(parts) != 2 {
			return Record{}, fmt.Errorf("changelog: malformed outbox subject %q", subject)
		}
		r.Outbox.Offset, _ = strconv.ParseUint(parts[0], 10, 64)
		r.Outbox.Index, _ = strconv.Atoi(parts[1])
		return r, nil
	}
	store, token, ok := strings.Cut(rest, ".")
	if !ok {
		return Record{}, fmt.Errorf("changelog: malformed subject %q", subject)
	}
	key, err := DecodeKey(token)
	if err != nil {
		return Record{}, err
	}
	r := Record{Kind: KindSet, Store: store, Key: []byte(key), Value: data}
	if header.Get(hdrOp) == opDelete {
		r.Kind, r.Value = KindDelete, nil
	}
	return r, nil
}
