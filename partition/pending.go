package partition

import (
	"encoding/binary"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy/changelog"
)

// An outbox entry that is committed and not known to be forwarded is kept in
// the local store, under pendingKey of its place in the changelog (the
// sequence of its message and its index there), until a forwarded mark
// covers it. The commit writes it, and so do restores and hot
// replicas from the changelog's outbox records; a restore reads the entries
// back to forward them.
//
// The value is the entry as msgpack (changelog.Outbox's fields without
// Offset and Index), then a trailer of pendingTrailer bytes, big-endian: the
// entry's input offset (uint64) and index (uint32), which the changelog
// carries in the subject, and when it was committed, in Unix nanoseconds
// (int64; 0 if unknown).

// pendingKeyPrefix keeps unforwarded outbox entries in the local store, out of
// every user store's key space (store names never start with 0x00).
const pendingKeyPrefix = "\x00out\x00"

// pendingTrailer is the size of what follows the msgpack entry in a value.
const pendingTrailer = 8 + 4 + 8

// pending is an outbox entry committed and not known to be forwarded.
type pending struct {
	seq uint64 // the sequence of its changelog message
	key []byte // its local store key
	out changelog.Outbox
	at  time.Time // when it was committed; zero if unknown
}

// pendingKey is the local store key of the pending entry that is record
// index of the changelog message at seq.
func pendingKey(seq uint64, index int) []byte {
	k := make([]byte, 0, len(pendingKeyPrefix)+12)
	k = binary.BigEndian.AppendUint64(append(k, pendingKeyPrefix...), seq)
	return binary.BigEndian.AppendUint32(k, uint32(index))
}

// pendingSeq is the changelog sequence of the pending entry stored under
// key. (Stores written before commits were framed, one record a message,
// have keys without the index; they sort and parse the same.)
func pendingSeq(key []byte) uint64 {
	return binary.BigEndian.Uint64(key[len(pendingKeyPrefix):])
}

// encodePending appends to dst the value that keeps o, committed at at (zero
// if unknown), in the local store. Besides what msgpack allocates inside (two
// small allocations), it allocates only to grow dst, once: Batch.Set copies
// the value, so a caller that writes many entries passes the same dst[:0]
// each time.
func encodePending(dst []byte, o *changelog.Outbox, at time.Time) ([]byte, error) {
	n := 32 + len(o.Subject) + len(o.MsgID) + len(o.Data) + pendingTrailer
	for k, v := range o.Header {
		n += 10 + len(k) + len(v)
	}
	e := pendingEncoders.Get().(*pendingEncoder)
	defer pendingEncoders.Put(e)
	e.w = slices.Grow(dst, n)
	err := e.enc.Encode(o)
	v := e.w
	e.w = nil
	if err != nil {
		return dst, err
	}
	v = binary.BigEndian.AppendUint64(v, o.Offset)
	v = binary.BigEndian.AppendUint32(v, uint32(o.Index))
	var ns int64
	if !at.IsZero() {
		ns = at.UnixNano()
	}
	return binary.BigEndian.AppendUint64(v, uint64(ns)), nil
}

// decodePending decodes a value encodePending made. The entry holds no
// reference to v.
func decodePending(v []byte) (changelog.Outbox, time.Time, error) {
	var out changelog.Outbox
	if len(v) < pendingTrailer {
		return out, time.Time{}, errors.New("short value")
	}
	t := v[len(v)-pendingTrailer:]
	if err := msgpack.Unmarshal(v[:len(v)-pendingTrailer], &out); err != nil {
		return out, time.Time{}, err
	}
	out.Offset = binary.BigEndian.Uint64(t)
	out.Index = int(binary.BigEndian.Uint32(t[8:]))
	var at time.Time
	if ns := int64(binary.BigEndian.Uint64(t[12:])); ns != 0 {
		at = time.Unix(0, ns)
	}
	return out, at, nil
}

// pendingEncoder is a msgpack encoder that appends to w. The encoder is the
// one msgpack.Marshal would use (no options set), so the bytes are the same.
type pendingEncoder struct {
	w   appendWriter
	enc *msgpack.Encoder
}

// pendingEncoders keeps pendingEncoder values for reuse by every partition.
var pendingEncoders = sync.Pool{New: func() any {
	e := new(pendingEncoder)
	e.enc = msgpack.NewEncoder(&e.w)
	return e
}}

// appendWriter appends what is written to it. It has WriteByte, so msgpack
// writes to it directly rather than through a byte-at-a-time adapter.
type appendWriter []byte

func (w *appendWriter) Write(p []byte) (int, error) {
	*w = append(*w, p...)
	return len(p), nil
}

func (w *appendWriter) WriteByte(c byte) error {
	*w = append(*w, c)
	return nil
}
