package main

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/changelog"
)

// commitLog records the meta records committed to the partitions'
// changelogs of an actor type from its start on, one per commit, with the
// NATS server's timestamp (the benches' view of commits and their gaps).
type commitLog struct {
	commits []partitionCommits // by partition
	stops   []func()
}

// partitionCommits are one partition's commits, appended by its consumer's
// callback and read after the load.
type partitionCommits struct {
	mu   sync.Mutex
	list []commitRecord
}

// commitRecord is one commit: its meta record and when the server stored it.
type commitRecord struct {
	at        time.Time
	epoch     uint64 // of the owner that committed
	offset    uint64 // the input sequence of its last event
	seq, prev uint64 // the meta record's changelog sequence, and the last before the batch
	records   int    // the records of its commit message, the meta record included
}

// commitRef names one commit: a partition and its index in the log.
type commitRef struct{ partition, i int }

func startCommitLog(ctx context.Context, nc *nats.Conn, typ string, partitions int) (*commitLog, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	l := &commitLog{commits: make([]partitionCommits, partitions)}
	for p := range partitions {
		s := changelog.NewSubjects(typ, p)
		cons, err := js.OrderedConsumer(ctx, s.Stream(), jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{s.Meta()},
			DeliverPolicy:  jetstream.DeliverNewPolicy,
		})
		if err != nil {
			l.stop()
			return nil, err
		}
		pc := &l.commits[p]
		cc, err := cons.Consume(func(msg jetstream.Msg) {
			md, err := msg.Metadata()
			if err != nil {
				return
			}
			_ = s.Records(msg.Subject(), msg.Data(), func(rec changelog.Record) error {
				if rec.Kind == changelog.KindMeta {
					pc.mu.Lock()
					pc.list = append(pc.list, commitRecord{at: md.Timestamp, epoch: rec.Meta.Epoch, offset: rec.Meta.Offset, seq: md.Sequence.Stream, prev: rec.Meta.Prev, records: rec.Index + 1})
					pc.mu.Unlock()
				}
				return nil
			})
		})
		if err != nil {
			l.stop()
			return nil, err
		}
		l.stops = append(l.stops, cc.Stop)
	}
	return l, nil
}

func (l *commitLog) stop() {
	for _, s := range l.stops {
		s()
	}
	l.stops = nil
}
