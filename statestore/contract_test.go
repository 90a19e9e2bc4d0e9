package statestore

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// The contract every Store keeps, run against Pebble and Memory.

func TestPebbleContract(t *testing.T) {
	testContract(t, func(t *testing.T) Store { return openTestPebble(t, testConfig(t)) })
}

func TestMemoryContract(t *testing.T) {
	testContract(t, func(t *testing.T) Store {
		s := NewMemory()
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}

func testContract(t *testing.T, open func(*testing.T) Store) {
	t.Run("GetSetDelete", func(t *testing.T) { contractGetSetDelete(t, open(t)) })
	t.Run("Copies", func(t *testing.T) { contractCopies(t, open(t)) })
	t.Run("Iterate", func(t *testing.T) { contractIterate(t, open(t)) })
	t.Run("IterateStops", func(t *testing.T) { contractIterateStops(t, open(t)) })
	t.Run("IterateReenters", func(t *testing.T) { contractIterateReenters(t, open(t)) })
	t.Run("BatchDiscarded", func(t *testing.T) { contractBatchDiscarded(t, open(t)) })
	t.Run("BatchCommitted", func(t *testing.T) { contractBatchCommitted(t, open(t)) })
	t.Run("BatchLifecycle", func(t *testing.T) { contractBatchLifecycle(t, open(t)) })
	t.Run("BatchAtomicUnderReaders", func(t *testing.T) { contractBatchAtomic(t, open(t)) })
	t.Run("Meta", func(t *testing.T) { contractMeta(t, open(t)) })
	t.Run("Typed", func(t *testing.T) { contractTyped(t, open(t)) })
	t.Run("Closed", func(t *testing.T) { contractClosed(t, open(t)) })
	t.Run("CloseUnderLoad", func(t *testing.T) { contractCloseUnderLoad(t, open(t)) })
}

func contractGetSetDelete(t *testing.T, s Store) {
	if _, err := s.Get([]byte("a")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get absent: err = %v, want ErrNotFound", err)
	}
	mustSet(t, s, "a", "1")
	mustSet(t, s, "b", "")
	if got := mustGet(t, s, "a"); got != "1" {
		t.Fatalf("get a = %q, want 1", got)
	}
	if v, err := s.Get([]byte("b")); err != nil || v == nil || len(v) != 0 {
		t.Fatalf("get empty value = %v, %v; want non-nil empty", v, err)
	}
	mustSet(t, s, "a", "2")
	if got := mustGet(t, s, "a"); got != "2" {
		t.Fatalf("overwritten a = %q, want 2", got)
	}
	if err := s.Delete([]byte("a")); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := s.Get([]byte("a")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get deleted: err = %v, want ErrNotFound", err)
	}
	if err := s.Delete([]byte("never")); err != nil {
		t.Fatalf("delete absent key: %v", err)
	}
	// Keys are bytes: the empty key and bytes below the internal prefix work.
	mustSet(t, s, "", "empty")
	mustSet(t, s, "\x00meta", "not meta")
	if got := mustGet(t, s, ""); got != "empty" {
		t.Fatalf("empty key = %q", got)
	}
	if m, err := s.Meta(); err != nil || m != (Meta{}) {
		t.Fatalf("a user key shaped like meta changed Meta: %+v, %v", m, err)
	}
}

func contractCopies(t *testing.T, s Store) {
	k, v := []byte("key"), []byte("value")
	if err := s.Set(k, v); err != nil {
		t.Fatal(err)
	}
	k[0], v[0] = 'X', 'X'
	got, err := s.Get([]byte("key"))
	if err != nil || string(got) != "value" {
		t.Fatalf("after changing Set's arguments: %q, %v", got, err)
	}
	got[0] = 'Y'
	if again := mustGet(t, s, "key"); again != "value" {
		t.Fatalf("changing Get's result changed the store: %q", again)
	}

	b := s.NewBatch()
	bk, bv := []byte("bkey"), []byte("bvalue")
	b.Set(bk, bv)
	bk[0], bv[0] = 'X', 'X'
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, s, "bkey"); got != "bvalue" {
		t.Fatalf("batch did not copy: %q", got)
	}
}

func contractIterate(t *testing.T, s Store) {
	for _, k := range []string{"b/2", "a/1", "b/1", "b/10", "c", "b", "b\xff", "b\xff\xff", "ba", "\xff"} {
		mustSet(t, s, k, "v"+k)
	}
	b := s.NewBatch()
	b.SetMeta(Meta{Offset: 1})
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}

	all := collect(t, s, "")
	want := []string{"a/1=va/1", "b=vb", "b/1=vb/1", "b/10=vb/10", "b/2=vb/2", "ba=vba", "b\xff=vb\xff", "b\xff\xff=vb\xff\xff", "c=vc", "\xff=v\xff"}
	if !slices.Equal(all, want) {
		t.Fatalf("iterate all (meta must not show) =\n%q\nwant\n%q", all, want)
	}
	if got, want := collect(t, s, "b/"), []string{"b/1=vb/1", "b/10=vb/10", "b/2=vb/2"}; !slices.Equal(got, want) {
		t.Fatalf("iterate b/ = %q, want %q", got, want)
	}
	if got, want := collect(t, s, "b\xff"), []string{"b\xff=vb\xff", "b\xff\xff=vb\xff\xff"}; !slices.Equal(got, want) {
		t.Fatalf("iterate b\\xff = %q, want %q", got, want)
	}
	if got, want := collect(t, s, "\xff"), []string{"\xff=v\xff"}; !slices.Equal(got, want) {
		t.Fatalf("iterate \\xff = %q, want %q", got, want)
	}
	if got := collect(t, s, "zzz"); len(got) != 0 {
		t.Fatalf("iterate absent prefix = %q", got)
	}
}

func contractIterateStops(t *testing.T, s Store) {
	for i := range 10 {
		mustSet(t, s, fmt.Sprintf("k%02d", i), "v")
	}
	stop := errors.New("stop")
	var seen []string
	err := s.Iterate([]byte("k"), func(k, _ []byte) error {
		seen = append(seen, string(k))
		if len(seen) == 3 {
			return stop
		}
		return nil
	})
	if err != stop {
		t.Fatalf("iterate err = %v, want the callback's error as is", err)
	}
	if want := []string{"k00", "k01", "k02"}; !slices.Equal(seen, want) {
		t.Fatalf("seen %q, want %q", seen, want)
	}
}

// The callback may use the store: a restore or a migration reads and writes
// while it scans.
func contractIterateReenters(t *testing.T, s Store) {
	for i := range 5 {
		mustSet(t, s, fmt.Sprintf("k%d", i), strconv.Itoa(i))
	}
	err := s.Iterate([]byte("k"), func(k, v []byte) error {
		got, err := s.Get(k)
		if err != nil || string(got) != string(v) {
			return fmt.Errorf("get %q inside iterate: %q, %v", k, got, err)
		}
		return s.Set(append([]byte("copy/"), k...), v)
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := collect(t, s, "copy/"); len(got) != 5 {
		t.Fatalf("copies = %q", got)
	}
}

func contractBatchDiscarded(t *testing.T, s Store) {
	mustSet(t, s, "keep", "1")
	b := s.NewBatch()
	b.Set([]byte("new"), []byte("x"))
	b.Delete([]byte("keep"))
	b.SetMeta(Meta{Offset: 7, ChangelogSeq: 8, Epoch: 9})
	if b.Len() != 2 {
		t.Fatalf("Len = %d, want 2", b.Len())
	}
	b.Close()
	b.Close() // twice is fine

	if _, err := s.Get([]byte("new")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("discarded set is visible: %v", err)
	}
	if got := mustGet(t, s, "keep"); got != "1" {
		t.Fatalf("discarded delete took effect: %q", got)
	}
	if m, err := s.Meta(); err != nil || m != (Meta{}) {
		t.Fatalf("discarded meta is visible: %+v, %v", m, err)
	}
	if err := b.Commit(); !errors.Is(err, ErrBatchDone) {
		t.Fatalf("commit after close: %v, want ErrBatchDone", err)
	}
}

func contractBatchCommitted(t *testing.T, s Store) {
	mustSet(t, s, "gone", "1")
	b := s.NewBatch()
	for i := range 100 {
		b.Set(fmt.Appendf(nil, "k%03d", i), []byte(strconv.Itoa(i)))
	}
	b.Delete([]byte("gone"))
	b.Set([]byte("k000"), []byte("last write wins"))
	want := Meta{Offset: 100, ChangelogSeq: 200, Epoch: 3}
	b.SetMeta(Meta{Offset: 1})
	b.SetMeta(want)
	if b.Len() != 102 {
		t.Fatalf("Len = %d, want 102", b.Len())
	}
	// Nothing is visible before Commit.
	if _, err := s.Get([]byte("k001")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("uncommitted write visible: %v", err)
	}
	if err := b.Commit(); err != nil {
		t.Fatalf("commit: %v", err)
	}
	if got := len(collect(t, s, "k")); got != 100 {
		t.Fatalf("%d keys after commit, want 100", got)
	}
	if got := mustGet(t, s, "k000"); got != "last write wins" {
		t.Fatalf("k000 = %q", got)
	}
	if _, err := s.Get([]byte("gone")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("batch delete: %v", err)
	}
	if m, err := s.Meta(); err != nil || m != want {
		t.Fatalf("meta = %+v, %v; want %+v", m, err, want)
	}

	// A batch without meta keeps the stored meta; an empty one is a no-op.
	b = s.NewBatch()
	b.Set([]byte("k999"), nil)
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := s.NewBatch().Commit(); err != nil {
		t.Fatalf("empty commit: %v", err)
	}
	if m, _ := s.Meta(); m != want {
		t.Fatalf("meta after a batch without meta = %+v, want %+v", m, want)
	}
	if v, err := s.Get([]byte("k999")); err != nil || v == nil || len(v) != 0 {
		t.Fatalf("nil value = %v, %v; want non-nil empty", v, err)
	}
}

func contractBatchLifecycle(t *testing.T, s Store) {
	b := s.NewBatch()
	b.Set([]byte("a"), []byte("1"))
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	b.Close() // safe after Commit
	if err := b.Commit(); !errors.Is(err, ErrBatchDone) {
		t.Fatalf("second commit: %v, want ErrBatchDone", err)
	}
	if b.Len() != 1 {
		t.Fatalf("Len after commit = %d", b.Len())
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("Set after Commit did not panic")
			}
		}()
		b.Set([]byte("b"), []byte("2"))
	}()
}

// contractBatchAtomic checks that readers never see a batch's data without its
// meta, nor its meta without its data. The writer commits batches that set
// key n and meta.Offset to the same i. Reading meta then key, the key is at
// least the meta; reading key then meta, the meta is at least the key.
func contractBatchAtomic(t *testing.T, s Store) {
	const batches = 300
	var wg sync.WaitGroup
	done := make(chan struct{})
	errc := make(chan error, 2)
	readN := func() (uint64, error) {
		v, err := s.Get([]byte("n"))
		if errors.Is(err, ErrNotFound) {
			return 0, nil
		}
		if err != nil {
			return 0, err
		}
		return strconv.ParseUint(string(v), 10, 64)
	}
	readMeta := func() (uint64, error) {
		m, err := s.Meta()
		return m.Offset, err
	}
	for order := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				var first, second uint64
				var err1, err2 error
				if order == 0 {
					first, err1 = readMeta()
					second, err2 = readN()
				} else {
					first, err1 = readN()
					second, err2 = readMeta()
				}
				if err := errors.Join(err1, err2); err != nil {
					errc <- err
					return
				}
				if second < first {
					errc <- fmt.Errorf("read order %d: saw %d, then %d: a batch landed in parts", order, first, second)
					return
				}
			}
		}()
	}
	for i := uint64(1); i <= batches; i++ {
		b := s.NewBatch()
		b.Set([]byte("n"), strconv.AppendUint(nil, i, 10))
		b.Set([]byte("filler"), make([]byte, 100))
		b.SetMeta(Meta{Offset: i, ChangelogSeq: i, Epoch: 1})
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	wg.Wait()
	select {
	case err := <-errc:
		t.Fatal(err)
	default:
	}
}

func contractMeta(t *testing.T, s Store) {
	if m, err := s.Meta(); err != nil || m != (Meta{}) {
		t.Fatalf("new store meta = %+v, %v; want zero", m, err)
	}
	want := Meta{Offset: 1<<64 - 1, ChangelogSeq: 42, Epoch: 7}
	b := s.NewBatch()
	b.SetMeta(want)
	if b.Len() != 0 {
		t.Fatalf("SetMeta counted in Len: %d", b.Len())
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if m, err := s.Meta(); err != nil || m != want {
		t.Fatalf("meta = %+v, %v; want %+v", m, err, want)
	}
	if got := collect(t, s, ""); len(got) != 0 {
		t.Fatalf("meta shows in Iterate: %q", got)
	}
}

type account struct {
	Owner   string            `msgpack:"owner"`
	Balance int64             `msgpack:"balance"`
	Tags    []string          `msgpack:"tags"`
	Limits  map[string]uint32 `msgpack:"limits"`
	Opened  time.Time         `msgpack:"opened"`
}

func contractTyped(t *testing.T, s Store) {
	accounts := NewTyped[account](s, []byte("acct/"))
	counts := NewTyped[int](s, []byte("count/"))

	if _, ok, err := accounts.Get([]byte("alice")); ok || err != nil {
		t.Fatalf("absent: ok=%v err=%v", ok, err)
	}
	want := account{
		Owner: "alice", Balance: -12, Tags: []string{"vip"},
		Limits: map[string]uint32{"daily": 500}, Opened: time.Unix(1700000000, 5).UTC(),
	}
	if err := accounts.Set([]byte("alice"), want); err != nil {
		t.Fatal(err)
	}
	if err := counts.Set([]byte("alice"), 3); err != nil {
		t.Fatal(err)
	}
	got, ok, err := accounts.Get([]byte("alice"))
	if err != nil || !ok {
		t.Fatalf("get: ok=%v err=%v", ok, err)
	}
	if got.Owner != want.Owner || got.Balance != want.Balance || !slices.Equal(got.Tags, want.Tags) ||
		got.Limits["daily"] != 500 || !got.Opened.Equal(want.Opened) {
		t.Fatalf("round trip = %+v, want %+v", got, want)
	}
	if n, ok, err := counts.Get([]byte("alice")); n != 3 || !ok || err != nil {
		t.Fatalf("count = %d, %v, %v", n, ok, err)
	}
	if keys := collect(t, s, "acct/"); len(keys) != 1 {
		t.Fatalf("typed values under acct/ = %q", keys)
	}
	if err := accounts.Delete([]byte("alice")); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := accounts.Get([]byte("alice")); ok || err != nil {
		t.Fatalf("after delete: ok=%v err=%v", ok, err)
	}
	if _, ok, _ := counts.Get([]byte("alice")); !ok {
		t.Fatal("delete under one prefix removed a key under another")
	}

	mustSet(t, s, "acct/bob", "not msgpack \xc1")
	if _, _, err := accounts.Get([]byte("bob")); err == nil {
		t.Fatal("decoding garbage did not fail")
	}
}

func contractClosed(t *testing.T, s Store) {
	mustSet(t, s, "a", "1")
	early := s.NewBatch()
	early.Set([]byte("b"), []byte("2"))
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := s.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second close: %v, want ErrClosed", err)
	}
	if _, err := s.Get([]byte("a")); !errors.Is(err, ErrClosed) {
		t.Fatalf("get: %v", err)
	}
	if err := s.Set([]byte("a"), nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("set: %v", err)
	}
	if err := s.Delete([]byte("a")); !errors.Is(err, ErrClosed) {
		t.Fatalf("delete: %v", err)
	}
	if err := s.Iterate(nil, func(_, _ []byte) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("iterate: %v", err)
	}
	if _, err := s.Meta(); !errors.Is(err, ErrClosed) {
		t.Fatalf("meta: %v", err)
	}
	if err := early.Commit(); !errors.Is(err, ErrClosed) {
		t.Fatalf("commit of a batch made before close: %v", err)
	}
	late := s.NewBatch()
	late.Set([]byte("c"), []byte("3"))
	late.SetMeta(Meta{Offset: 1})
	if err := late.Commit(); !errors.Is(err, ErrClosed) {
		t.Fatalf("commit of a batch made after close: %v", err)
	}
	s.NewBatch().Close()
}

// contractCloseUnderLoad closes the store while goroutines use it: every
// call either works or returns ErrClosed, and nothing panics.
func contractCloseUnderLoad(t *testing.T, s Store) {
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	started := make(chan struct{}, 4)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			signaled := false
			defer func() {
				if !signaled {
					started <- struct{}{}
				}
			}()
			for i := 0; ; i++ {
				k := fmt.Appendf(nil, "w%d/%d", w, i%50)
				var err error
				switch i % 4 {
				case 0:
					err = s.Set(k, k)
				case 1:
					_, err = s.Get(k)
				case 2:
					err = s.Iterate([]byte(fmt.Sprintf("w%d/", w)), func(_, _ []byte) error { return nil })
				case 3:
					b := s.NewBatch()
					b.Set(k, k)
					b.SetMeta(Meta{Offset: uint64(i)})
					err = b.Commit()
				}
				if i == 100 {
					started <- struct{}{}
					signaled = true
				}
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil && !errors.Is(err, ErrNotFound) {
					errc <- err
					return
				}
			}
		}()
	}
	for range 4 {
		<-started
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close under load: %v", err)
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
}
