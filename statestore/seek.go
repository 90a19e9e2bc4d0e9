package statestore

import "bytes"

// IterateAfter is Iterate over the keys with the prefix that sort strictly
// after the key after (all of them when after is nil), in ascending order,
// over a consistent snapshot taken when it starts: a long scan can resume
// where it stopped without visiting what it has seen again.
func (p *Pebble) IterateAfter(prefix, after []byte, fn func(key, value []byte) error) error {
	if !p.gate.enter() {
		return ErrClosed
	}
	defer p.gate.leave()

	lower, upper := userBounds(prefix)
	if after != nil {
		// The least stored key above userPrefix+after is userPrefix+after+0x00.
		next := append(append(append(make([]byte, 0, len(after)+2), userPrefix), after...), 0)
		if bytes.Compare(next, lower) > 0 {
			lower = next
		}
	}
	if bytes.Compare(lower, upper) >= 0 {
		return nil
	}
	return p.iterate(lower, upper, fn)
}
