package natsproc

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// newCluster prepares a Cluster (nothing started) that is closed when the
// test ends; if the test failed, the servers' logs are printed first.
func newCluster(t testing.TB, cfg Config) *Cluster {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("natsproc.New: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i := range c.Size() {
				t.Log(c.LogTail(i, 16<<10))
			}
		}
		if err := c.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return c
}

// waitReady is WaitReady failing the test, logging how long it took.
func waitReady(t testing.TB, ctx context.Context, c *Cluster, why string) {
	t.Helper()
	start := time.Now()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatalf("%s: %v", why, err)
	}
	t.Logf("%s: ready in %v", why, time.Since(start).Round(time.Millisecond))
}

// connect returns a client of every server that reconnects forever, every
// 50 ms, and is closed when the test ends. It may be made before any server
// runs. It pings every 250 ms and gives a server up after 2 unanswered
// pings: a client notices a paused (SIGSTOPped) server only so, and with the
// default 2 minutes a test would hang on it.
func connect(t testing.TB, c *Cluster) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(c.ConnectURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond),
		nats.RetryOnFailedConnect(true), nats.Name(t.Name()),
		nats.PingInterval(250*time.Millisecond), nats.MaxPingsOutstanding(2))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return js.Conn(), js
}

// publisher publishes the messages 1, 2, 3, ... to one subject, each with
// Nats-Msg-Id m<k>, retrying a message until it is acknowledged: the
// stream's duplicate window makes the retries exactly-once, so message k is
// at sequence k.
type publisher struct {
	js      jetstream.JetStream
	subject string
	sent    int // messages acknowledged
}

// publish sends n more messages and returns how long the slowest one took
// from its first attempt to its ack, and the distinct errors retried.
func (p *publisher) publish(t testing.TB, ctx context.Context, n int) (slowest time.Duration, errs []string) {
	t.Helper()
	seen := map[string]bool{}
	for range n {
		k := p.sent + 1
		start := time.Now()
		for {
			actx, cancel := context.WithTimeout(ctx, 2*time.Second)
			ack, err := p.js.Publish(actx, p.subject, []byte(strconv.Itoa(k)), jetstream.WithMsgID(fmt.Sprintf("m%d", k)))
			cancel()
			if err == nil {
				if ack.Sequence != uint64(k) {
					t.Fatalf("message %d acknowledged at sequence %d (duplicate %v)", k, ack.Sequence, ack.Duplicate)
				}
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("publish message %d: %v (gave up after %v)", k, err, time.Since(start))
			}
			if e := err.Error(); !seen[e] {
				seen[e] = true
				errs = append(errs, e)
			}
			time.Sleep(50 * time.Millisecond)
		}
		slowest = max(slowest, time.Since(start))
		p.sent = k
	}
	return slowest, errs
}

// checkStream asserts that stream holds exactly the messages 1..n, message k
// at sequence k, reading each one from the stream's leader.
func checkStream(t testing.TB, ctx context.Context, js jetstream.JetStream, stream string, n int) {
	t.Helper()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	st := s.CachedInfo().State
	if st.Msgs != uint64(n) || st.FirstSeq != 1 || st.LastSeq != uint64(n) {
		t.Fatalf("stream %s holds %d messages, sequences %d..%d; want %d, 1..%d", stream, st.Msgs, st.FirstSeq, st.LastSeq, n, n)
	}
	for k := 1; k <= n; k++ {
		m, err := s.GetMsg(ctx, uint64(k))
		if err != nil {
			t.Fatalf("stream %s sequence %d: %v", stream, k, err)
		}
		if string(m.Data) != strconv.Itoa(k) {
			t.Fatalf("stream %s sequence %d holds %q, want %q", stream, k, m.Data, strconv.Itoa(k))
		}
	}
}

// errorsIs is errors.Is failing the test.
func errorsIs(t testing.TB, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("got error %v, want %v", err, target)
	}
}

// mustIndex is Index failing the test.
func mustIndex(t testing.TB, c *Cluster, name string) int {
	t.Helper()
	i, err := c.Index(name)
	if err != nil {
		t.Fatal(err)
	}
	return i
}
