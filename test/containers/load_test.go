//go:build containers

package containers

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/internal/workload"
)

// The load of every scenario: the bank and the word count, fed by a
// producer that is not eddy's Client (internal/workload: plain JetStream
// publishes of JSON), and checked exactly at the end of each scenario.
const (
	bankRate = 60 // bank events a second
	lineRate = 20 // lines a second
	// caughtUpTimeout bounds the wait for every event sent to be processed
	// once the load pauses: a second or two here.
	caughtUpTimeout = 2 * time.Minute
)

// load is the producer and what checks its effects.
type load struct {
	t  *testing.T
	c  *dockerCluster
	p  *workload.Producer
	nc *nats.Conn // the checker's own connection
	js jetstream.JetStream
}

// natsPings makes a client find out within ~2 s that its server was cut
// off the network (no reset comes): a ping every 500 ms, 3 unanswered.
var natsPings = []nats.Option{nats.PingInterval(500 * time.Millisecond), nats.MaxPingsOutstanding(3)}

// newLoad connects the producer and the checker to the NATS servers'
// data-network addresses and funds the accounts.
func newLoad(t *testing.T, c *dockerCluster, seed uint64) *load {
	var urls []string
	for _, n := range c.nats {
		urls = append(urls, "nats://"+n.ips[c.data]+":4222")
	}
	url := strings.Join(urls, ",")
	p, err := workload.NewProducer(url, partitions, seed, bankRate, lineRate, natsPings...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.StopAndWait() })
	nc, err := nats.Connect(url, append([]nats.Option{nats.Name("eddy containers checker"), nats.MaxReconnects(-1),
		nats.ReconnectWait(100 * time.Millisecond), nats.RetryOnFailedConnect(true)}, natsPings...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := p.Fund(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("producer: %d accounts funded in %v", len(p.Accounts()), time.Since(start).Round(time.Millisecond))
	return &load{t: t, c: c, p: p, nc: nc, js: js}
}

// start starts a round of load.
func (l *load) start() { l.p.Start(context.Background()) }

// get reads a node's HTTP path, spreading reads over the nodes that are
// not cut off any network, by key and attempt.
func (l *load) get(ctx context.Context, i, try int, path string, v any) error {
	var ns []*container
	for _, n := range l.c.nodes {
		if !n.isolated() {
			ns = append(ns, n)
		}
	}
	if len(ns) == 0 {
		ns = l.c.nodes
	}
	n := ns[(i+try)%len(ns)]
	return l.c.get(ctx, l.c.nodeURL(n)+path, v)
}

// readState reads every account and word through the nodes.
func (l *load) readState(ctx context.Context) (workload.State, error) {
	return workload.ReadState(ctx, l.get, l.p.Accounts(), true)
}

// verify pauses the load, waits until every event sent is processed and
// checks the bank and the word count exactly (every account, every word,
// each running count emitted once, each event stored once, no dead
// letter). It returns the events sent so far and the violations, each
// also reported with t.Errorf.
func (l *load) verify(t *testing.T) (events int64, violations int) {
	t.Helper()
	if err := l.p.Pause(); err != nil {
		t.Fatal(err)
	}
	m := l.p.Snapshot()
	ctx, cancel := context.WithTimeout(context.Background(), 2*caughtUpTimeout)
	defer cancel()
	start := time.Now()
	st := workload.WaitCaughtUp(ctx, t, l.get, l.p, m, true, caughtUpTimeout)
	violations = workload.Check(ctx, t, l.js, st, m, true)
	t.Logf("checked exactly: %d events in all (%d bank, %d lines of %d words), caught up in %v, %d violations",
		m.Events(), m.Deposits+m.Transfers, m.Lines, m.WordsSent, time.Since(start).Round(100*time.Millisecond), violations)
	return m.Events(), violations
}

// figures is what the closing report says of each scenario.
type figures struct {
	name       string
	events     int64         // events the scenario sent
	violations int           // of the exact checks
	longestGap time.Duration // the longest interval between two commits of a partition
	gapOf      string        // the partition it was
	heal       time.Duration // from the repair to every partition committing (and, where it moves work, balanced)
	note       string
}

func (f figures) String() string {
	return fmt.Sprintf("%-34s events %6d  violations %d  longest gap %-8v (%s)  heal %-8v %s",
		f.name, f.events, f.violations, f.longestGap.Round(10*time.Millisecond), f.gapOf, f.heal.Round(10*time.Millisecond), f.note)
}
