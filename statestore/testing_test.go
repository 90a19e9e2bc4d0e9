package statestore

import (
	"testing"

	"github.com/eddyrt/eddy/internal/testkit"
)

// testConfig is a Config for a store in a fresh temporary directory.
func testConfig(t testing.TB) Config {
	cfg := DefaultConfig(t.TempDir())
	cfg.Logger = testkit.Logger(t)
	return cfg
}

// openTestPebble opens a store that is closed when the test ends (unless the
// test closed it already).
func openTestPebble(t testing.TB, cfg Config) *Pebble {
	t.Helper()
	s, err := OpenPebble(cfg)
	if err != nil {
		t.Fatalf("open pebble: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func mustGet(t testing.TB, s KV, key string) string {
	t.Helper()
	v, err := s.Get([]byte(key))
	if err != nil {
		t.Fatalf("get %q: %v", key, err)
	}
	return string(v)
}

func mustSet(t testing.TB, s KV, key, value string) {
	t.Helper()
	if err := s.Set([]byte(key), []byte(value)); err != nil {
		t.Fatalf("set %q: %v", key, err)
	}
}

// collect returns "k=v" for each key Iterate visits under prefix.
func collect(t testing.TB, s Store, prefix string) []string {
	t.Helper()
	var out []string
	var p []byte
	if prefix != "" {
		p = []byte(prefix)
	}
	err := s.Iterate(p, func(k, v []byte) error {
		out = append(out, string(k)+"="+string(v))
		return nil
	})
	if err != nil {
		t.Fatalf("iterate %q: %v", prefix, err)
	}
	return out
}
