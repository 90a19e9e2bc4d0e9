package main

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/partition"
)

// limitType names the changelog-like stream of the limit pipeline.
const limitType = "limit"

// limit is the machine's limit for eddy's data path, measured in the same
// run: the two halves every event costs, at their own best speed.
type limit struct {
	read     float64 // events/s, one unfiltered ordered consumer over the whole input
	publish  float64 // changelog records/s, async publishes
	perEvent float64 // changelog records eddy wrote per event
}

// rate is the events/s of a pipeline that reads each event and publishes
// perEvent records for it, each half at its measured speed.
func (l limit) rate() float64 { return 1 / (1/l.read + l.perEvent/l.publish) }

// limitPipeline measures the limit: it reads the whole input stream with
// one unfiltered ordered consumer, then publishes records changelog records
// (a count under one of the bench's keys each, as eddy's handler stores) to
// a changelog stream of its own, asynchronously, and deletes it.
func (b *bench) limitPipeline(ctx context.Context, records int) (limit, error) {
	o := b.opts
	l := limit{perEvent: float64(records) / float64(o.events)}
	st, err := b.js.Stream(ctx, benchType)
	if err != nil {
		return l, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return l, err
	}
	start := time.Now()
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return l, err
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(2 * b.cfg.BatchSize))
	if err != nil {
		return l, err
	}
	var n int
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			it.Stop()
			return l, err
		}
		n++
		md, err := msg.Metadata()
		if err != nil {
			it.Stop()
			return l, err
		}
		if md.Sequence.Stream >= info.State.LastSeq {
			break
		}
	}
	it.Stop()
	l.read = rate(n, time.Since(start))

	s := changelog.NewSubjects(limitType, 0)
	if _, err := changelog.EnsureStream(ctx, b.js, s, changelog.DefaultStreamConfig()); err != nil {
		return l, err
	}
	defer func() { _ = b.js.DeleteStream(context.Background(), s.Stream()) }()
	var failed atomic.Int64
	js, err := jetstream.New(b.nc, jetstream.WithPublishAsyncMaxPending(o.inFlight),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { failed.Add(1) }))
	if err != nil {
		return l, err
	}
	msgs := make([]*nats.Msg, 0, min(records, o.keys))
	for i := range cap(msgs) {
		value, err := msgpack.Marshal(int64(i))
		if err != nil {
			return l, err
		}
		m, err := s.PartMsg(changelog.Record{Kind: changelog.KindSet, Store: partition.DefaultStore, Key: []byte("k" + strconv.Itoa(i)), Value: value})
		if err != nil {
			return l, err
		}
		msgs = append(msgs, m)
	}
	start = time.Now()
	for i := range records {
		m := msgs[i%len(msgs)]
		if _, err := js.PublishMsgAsync(&nats.Msg{Subject: m.Subject, Header: m.Header, Data: m.Data}, jetstream.WithStallWait(time.Minute)); err != nil {
			return l, err
		}
	}
	if err := waitAsync(ctx, js); err != nil {
		return l, err
	}
	if f := failed.Load(); f > 0 {
		return l, fmt.Errorf("%d records not stored", f)
	}
	l.publish = rate(records, time.Since(start))
	return l, nil
}
