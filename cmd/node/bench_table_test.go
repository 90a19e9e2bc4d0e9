package main

import (
	"bytes"
	"context"
	"regexp"
	"testing"

	"github.com/eddyrt/eddy/internal/testkit"
)

func TestBenchTableTiny(t *testing.T) {
	var out bytes.Buffer
	c := &cli{stdout: &out, stderr: testkit.LogWriter(t), lookupEnv: env(nil)}
	args := []string{"bench", "table", "--keys", "2000", "--runs", "1"}
	if code := c.main(context.Background(), args); code != 0 {
		t.Fatalf("bench table exited with %d:\n%s", code, out.String())
	}
	t.Log(out.String())
	re := `(?m)^bench: global table bootstrap ratio=\d+\.\d\d table=\d+ raw=\d+ records=2000$`
	if !regexp.MustCompile(re).MatchString(out.String()) {
		t.Errorf("output lacks a line matching %s:\n%s", re, out.String())
	}
}
