package statestore

import "sync"

// Layout of the keys inside a Pebble store. Every user key is stored behind
// userPrefix; internal records live behind internalPrefix, out of reach of
// user keys and of Iterate.
const (
	internalPrefix byte = 0x00
	userPrefix     byte = 0x01
)

// metaKey holds the msgpack-encoded Meta.
var metaKey = []byte{internalPrefix, 'm', 'e', 't', 'a'}

// keyPool recycles buffers for prefixed keys, so Get, Set and Delete do not
// allocate one per call.
var keyPool = sync.Pool{New: func() any {
	b := make([]byte, 0, 128)
	return &b
}}

// maxPooledKey keeps rare huge keys from pinning memory in the pool.
const maxPooledKey = 4 << 10

// getUserKey returns a pooled buffer holding userPrefix+key; release it with
// putKey once pebble no longer needs it.
func getUserKey(key []byte) *[]byte {
	bp := keyPool.Get().(*[]byte)
	b := append((*bp)[:0], userPrefix)
	*bp = append(b, key...)
	return bp
}

func putKey(bp *[]byte) {
	if cap(*bp) <= maxPooledKey {
		keyPool.Put(bp)
	}
}

// userBounds returns the [lower, upper) range of stored keys that carry
// userPrefix+prefix.
func userBounds(prefix []byte) (lower, upper []byte) {
	buf := make([]byte, 0, 2*(len(prefix)+1))
	lower = append(append(buf, userPrefix), prefix...)
	upper = append(buf[len(lower):len(lower)], lower...)
	// The successor of the prefix: drop trailing 0xff bytes, bump the last
	// byte. userPrefix is below 0xff, so this always ends.
	for i := len(upper) - 1; i >= 0; i-- {
		if upper[i] != 0xff {
			upper[i]++
			return lower, upper[:i+1]
		}
	}
	panic("unreachable")
}
