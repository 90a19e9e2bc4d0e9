package statestore

import (
	"slices"
	"testing"
)

// IterateAfter visits exactly the keys of the prefix above the given key, in
// order, whether or not that key exists, so a scan resumes where it stopped.
func TestPebbleIterateAfter(t *testing.T) {
	s := openTestPebble(t, testConfig(t))
	for _, k := range []string{"a\x00k1", "a\x00k2", "a\x00k3", "b\x00k1", "\x00internal"} {
		mustSet(t, s, k, "v")
	}
	scan := func(prefix, after string) []string {
		var p, a []byte
		if prefix != "" {
			p = []byte(prefix)
		}
		if after != "" {
			a = []byte(after)
		}
		var out []string
		if err := s.IterateAfter(p, a, func(k, _ []byte) error {
			out = append(out, string(k))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	for _, c := range []struct {
		prefix, after string
		want          []string
	}{
		{"", "", []string{"\x00internal", "a\x00k1", "a\x00k2", "a\x00k3", "b\x00k1"}},
		{"", "a\x00k2", []string{"a\x00k3", "b\x00k1"}},
		{"", "a\x00k25", []string{"a\x00k3", "b\x00k1"}}, // a key not stored
		{"a", "a\x00k1", []string{"a\x00k2", "a\x00k3"}},
		{"a", "", []string{"a\x00k1", "a\x00k2", "a\x00k3"}},
		{"a", "\x00", []string{"a\x00k1", "a\x00k2", "a\x00k3"}}, // below the prefix
		{"a", "b", nil}, // above it
		{"", "b\x00k1", nil},
	} {
		if got := scan(c.prefix, c.after); !slices.Equal(got, c.want) {
			t.Errorf("IterateAfter(%q, %q) = %q, want %q", c.prefix, c.after, got, c.want)
		}
	}
}
