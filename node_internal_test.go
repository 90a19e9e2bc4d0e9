package eddy

import (
	"strings"
	"testing"
)

func TestRedactURLHidesPasswords(t *testing.T) {
	got := redactURL("nats://user:secret@nats-1:4222, nats://nats-2:4222")
	if strings.Contains(got, "secret") || !strings.Contains(got, "nats-2") || !strings.Contains(got, "user:") {
		t.Fatalf("redacted %q", got)
	}
}
