//go:build !race

package partition

import "testing"

// TestEncodePendingAllocs checks that the commit path's encoding of outbox
// entries allocates no more than msgpack does inside (2 small allocations,
// for Outbox's omitempty field) once its buffer is large enough. The value
// was 5 allocations before encodePending. (Under the race detector sync.Pool
// drops items on purpose, hence the build tag.)
func TestEncodePendingAllocs(t *testing.T) {
	e := pendingTestEntries[0]
	v, err := encodePending(nil, &e.out, e.at)
	if err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		v, err = encodePending(v[:0], &e.out, e.at)
	})
	if err != nil || allocs > 2 {
		t.Fatalf("encodePending into a large enough buffer: %v allocations a call (err %v), want 2 at most", allocs, err)
	}
}
