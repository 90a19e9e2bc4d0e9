package statestore

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// BenchmarkPebbleBatchSet writes batches of 1000 keys of 100 B values, as a
// restore does; ns/op is per key.
func BenchmarkPebbleBatchSet(b *testing.B) {
	s := openTestPebble(b, DefaultConfig(b.TempDir())) // no logger: benchmarks always print logs
	const batchSize = 1000
	value := make([]byte, 100)
	key := make([]byte, 12)
	b.ReportAllocs()
	b.SetBytes(int64(len(key) + len(value)))
	b.ResetTimer()
	batch := s.NewBatch()
	for i := range b.N {
		binary.BigEndian.PutUint64(key[4:], uint64(i))
		batch.Set(key, value)
		if batch.Len() == batchSize {
			batch.SetMeta(Meta{Offset: uint64(i)})
			if err := batch.Commit(); err != nil {
				b.Fatal(err)
			}
			batch = s.NewBatch()
		}
	}
	if err := batch.Commit(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "keys/s")
}

// BenchmarkPebbleGet reads random keys of a 200 k key store (which fits the
// default block cache after warm-up).
func BenchmarkPebbleGet(b *testing.B) {
	s := openTestPebble(b, DefaultConfig(b.TempDir())) // no logger: benchmarks always print logs
	const keys = 200_000
	value := make([]byte, 100)
	key := make([]byte, 12)
	batch := s.NewBatch()
	for i := range keys {
		binary.BigEndian.PutUint64(key[4:], uint64(i))
		batch.Set(key, value)
		if batch.Len() == 1000 {
			if err := batch.Commit(); err != nil {
				b.Fatal(err)
			}
			batch = s.NewBatch()
		}
	}
	if err := batch.Commit(); err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		binary.BigEndian.PutUint64(key[4:], rng.Uint64N(keys))
		if _, err := s.Get(key); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "gets/s")
}
