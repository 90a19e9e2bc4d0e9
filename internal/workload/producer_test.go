package workload

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/examples/apps"
	"github.com/eddyrt/eddy/internal/natstest"
	"github.com/eddyrt/eddy/internal/testkit"
)

// TestProducerRounds runs the producer in three rounds separated by Pause
// against an embedded nats-server: every event the model holds is stored
// exactly once, so no round reused an earlier round's message ids (a reused
// id is acknowledged as a duplicate and not stored), and Pause kept the
// connection open.
func TestProducerRounds(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, typ := range []string{apps.BankType, apps.LinesType} {
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: typ, Subjects: []string{typ + ".>"}}); err != nil {
			t.Fatal(err)
		}
	}
	p, err := NewProducer(srv.URL(), 4, 1, 400, 200)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.StopAndWait() })
	if err := p.Fund(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Fund(ctx); err == nil {
		t.Fatal("a second Fund: no error")
	}
	for round := range 3 {
		before := p.Events()
		p.Start(ctx)
		testkit.WaitFor(t, 10*time.Second, "50 more events", func() bool { return p.Events() >= before+50 })
		if err := p.Pause(); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
	if err := p.StopAndWait(); err != nil {
		t.Fatal(err)
	}
	m := p.Snapshot()
	if m.Transfers == 0 || m.Lines == 0 {
		t.Fatalf("model %+v: want transfers and lines", m)
	}
	for typ, want := range map[string]int64{apps.BankType: m.Deposits + m.Transfers, apps.LinesType: m.Lines} {
		got, err := StreamMsgs(ctx, js, typ)
		if err != nil {
			t.Fatal(err)
		}
		if got != uint64(want) {
			t.Errorf("stream %s holds %d events, the model %d", typ, got, want)
		}
	}
	if n := p.Duplicates(); n != 0 {
		t.Errorf("%d duplicate acks", n)
	}
}
