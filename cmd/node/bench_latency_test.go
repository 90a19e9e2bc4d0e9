package main

import (
	"bytes"
	"context"
	"regexp"
	"testing"

	"github.com/eddyrt/eddy/internal/testkit"
)

func TestBenchLatencyTiny(t *testing.T) {
	var out bytes.Buffer
	c := &cli{stdout: &out, stderr: testkit.LogWriter(t), lookupEnv: env(nil)}
	args := []string{"bench", "latency", "--partitions", "2", "--keys", "100", "--saturate", "2s", "--duration", "2s", "--warmup", "500ms"}
	if code := c.main(context.Background(), args); code != 0 {
		t.Fatalf("bench latency exited with %d:\n%s", code, out.String())
	}
	t.Log(out.String())
	for _, re := range []string{
		`(?m)^bench: latency p50=\d+\.\d\d p99=\d+\.\d\d p999=\d+\.\d\d rate=\d+$`,
		`(?m)^bench: latency max_rate=\d+ samples=[1-9]\d*$`,
		`(?m)^bench: latency raw p50=\d+\.\d\d p99=\d+\.\d\d p999=\d+\.\d\d eddy_p99/raw_p99=\d+\.\d\d$`,
	} {
		if !regexp.MustCompile(re).MatchString(out.String()) {
			t.Errorf("output lacks a line matching %s:\n%s", re, out.String())
		}
	}
}
