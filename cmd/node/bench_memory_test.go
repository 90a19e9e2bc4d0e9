package main

import (
	"bytes"
	"context"
	"regexp"
	"testing"

	"github.com/eddyrt/eddy/internal/testkit"
)

// TestBenchMemoryTiny runs `node bench memory` on a few thousand keys (the
// test binary as the node process, as in the multi-process tests) and
// checks that it reports every figure.
func TestBenchMemoryTiny(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a nats-server and a node process")
	}
	t.Setenv("EDDY_TEST_AS_NODE", "1") // inherited by the node process
	var out bytes.Buffer
	c := &cli{stdout: &out, stderr: testkit.LogWriter(t), lookupEnv: env(nil)}
	args := []string{"bench", "memory", "--keys", "3000", "--partitions", "4", "--in-flight", "256", "--dir", t.TempDir()}
	if code := c.main(context.Background(), args); code != 0 {
		t.Fatalf("bench memory exited with %d:\n%s", code, out.String())
	}
	t.Log(out.String())
	num := `\d+\.\d+`
	for _, re := range []string{
		`(?m)^bench: memory keys=3000 rss_mb=` + num + ` heap_mb=` + num + ` nats_rss_mb=` + num + ` nats_restart_s=\d+\.\d\d$`,
		`(?m)^bench: memory nats_rss_after_restart_mb=` + num + ` nats_disk_mb=` + num + ` eddy_disk_mb=` + num +
			` load_rate=\d+ load_s=` + num + ` process_s=` + num + `$`,
	} {
		if !regexp.MustCompile(re).MatchString(out.String()) {
			t.Errorf("output lacks a line matching %s:\n%s", re, out.String())
		}
	}
}
