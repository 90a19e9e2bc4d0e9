package changelog

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/internal/natstest"
	"github.com/eddyrt/eddy/internal/streams"
)

// The partition actor's path: EnsureStream refuses a changelog that exists
// with a MaxMsgsPerSubject (an earlier eddy's compacted changelog), naming
// the field and both values, and leaves it alone; it turns on direct gets
// of one that lacks them.
func TestEnsureStreamRefusesACompactedChangelog(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, js := natstest.Start(t).Connect(t)
	bad, good := NewSubjects("orders", 0), NewSubjects("orders", 1)
	for _, c := range []jetstream.StreamConfig{
		{Name: bad.Stream(), Subjects: []string{bad.All()}, MaxMsgsPerSubject: 1, AllowAtomicPublish: true},
		{Name: good.Stream(), Subjects: []string{good.All()}, AllowAtomicPublish: true},
	} {
		if _, err := js.CreateStream(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	_, err := EnsureStream(ctx, js, bad, DefaultStreamConfig())
	if err == nil || !strings.Contains(err.Error(), "changelog EDDY_CL_orders_0 exists with MaxMsgsPerSubject 1, eddy needs -1") {
		t.Fatalf("err %v; want MaxMsgsPerSubject named", err)
	}
	if !errors.Is(err, streams.ErrIncompatible) {
		t.Fatalf("err %v is no incompatible-stream error", err)
	}
	st, err := EnsureStream(ctx, js, good, DefaultStreamConfig())
	if err != nil || !st.CachedInfo().Config.AllowDirect {
		t.Fatalf("direct gets not turned on: %v", err)
	}
	if err := CheckStreams(ctx, js, "orders", 4, DefaultStreamConfig(), nil); err == nil ||
		!strings.Contains(err.Error(), "MaxMsgsPerSubject") {
		t.Fatalf("CheckStreams: %v", err)
	}
}
