package main

import (
	"bytes"
	"context"
	"regexp"
	"testing"

	"github.com/eddyrt/eddy/internal/pgtest"
	"github.com/eddyrt/eddy/internal/testkit"
)

// TestBenchPostgresTiny runs `node bench postgres` on a few thousand events
// (a throwaway PostgreSQL without fsync), from empty tables and then over
// existing rows: both sides must end with every key's exact count, which
// the bench checks after each phase (over existing rows, a count a new
// node's partitions did not read from PostgreSQL misses the first half's
// events).
func TestBenchPostgresTiny(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a PostgreSQL server")
	}
	pgtest.Require(t)
	var out bytes.Buffer
	c := &cli{stdout: &out, stderr: testkit.LogWriter(t), lookupEnv: env(nil)}
	args := []string{"bench", "postgres", "--events", "2000", "--keys", "500", "--partitions", "2", "--batch-size", "300",
		"--runs", "1", "--pg-durable=false", "--dir", t.TempDir()}
	if code := c.main(context.Background(), args); code != 0 {
		t.Fatalf("bench postgres exited with %d:\n%s", code, out.String())
	}
	t.Log(out.String())
	for _, re := range []string{
		`(?m)^  run 1: eddy 2000 events in \S+ = \d+ ev/s`,
		`(?m)^  run 1: raw  \d+ rows in \S+ = \d+ rows/s`,
		`(?m)^bench: postgres ratio=\d+\.\d\d$`,
		`(?m)^  run 1: eddy over existing rows 2000 events in \S+ = \d+ ev/s`,
		`(?m)^  run 1: raw  over existing rows \d+ rows in \S+ = \d+ rows/s`,
		`(?m)^bench: postgres ratio=\d+\.\d\d\n(?s:.*)^bench: postgres existing-rows ratio=\d+\.\d\d$`,
	} {
		if !regexp.MustCompile(re).MatchString(out.String()) {
			t.Errorf("output lacks a line matching %s:\n%s", re, out.String())
		}
	}
}
