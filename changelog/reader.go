package changelog

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Progress reports how far a replay has got.
type Progress struct {
	Done    uint64        // messages read so far
	Total   uint64        // messages to read
	Rate    float64       // records per second since the start
	Elapsed time.Duration // time since the start
	ETA     time.Duration // estimated time left
}

// Percent is Done as a percentage of Total.
func (p Progress) Percent() float64 {
	if p.Total == 0 {
		return 100
	}
	return 100 * float64(p.Done) / float64(p.Total)
}

// ConsumerInactiveThreshold is how long the server keeps an ordered consumer
// of eddy's (changelog replays and tails, input readers) after its client
// stopped pulling: a consumer with a pull request whose client is connected
// stays. The nats.go default, 5 minutes, let every killed node leave its
// consumers behind for that long; each one costs the server work on every
// message the stream takes, and failovers slowed down kill after kill
// (measured: API calls of 0.4-1 s after 17 kills in 3 minutes).
const ConsumerInactiveThreshold = 2 * time.Second

// ConsumerHeartbeat is the idle heartbeat of eddy's ordered consumers: two
// missed heartbeats make the client recreate a consumer that its server
// lost (a cluster member killed while the client stays connected to
// another). nats.go's default for ordered consumers, 5 s, kept partitions
// on a 3-server cluster from reading again for ~10 s after a member was
// killed (measured in the NATS chaos test); 1 s costs one small message a
// second per idle consumer.
const ConsumerHeartbeat = time.Second

// ReplayConfig tunes a replay.
type ReplayConfig struct {
	// From is the first changelog sequence to read (1 for the whole changelog).
	From uint64
	// ProgressEvery is how often OnProgress is called (0: never).
	ProgressEvery time.Duration
	// OnProgress receives progress reports.
	OnProgress func(Progress)
	// Buffer is how many messages the ordered consumer keeps in flight.
	Buffer int
}

// Replay reads the changelog of s from cfg.From up to the last sequence it has
// when Replay starts, calling apply for each record in order with the
// sequence of its message, and returns that last sequence (cfg.From-1, or
// the stream's last sequence, when there is nothing to read). cfg.From must
// be the first sequence of a commit (1, or one past a meta record). apply
// must not keep rec's slices past the call.
func Replay(ctx context.Context, js jetstream.JetStream, s Subjects, cfg ReplayConfig,
	apply func(seq uint64, rec Record) error) (uint64, error) {
	st, err := js.Stream(ctx, s.Stream())
	if err != nil {
		return 0, fmt.Errorf("replay %s: %w", s.Stream(), err)
	}
	info := st.CachedInfo() // fetched by js.Stream just now
	from := max(cfg.From, 1)
	target := info.State.LastSeq
	if target < from || info.State.Msgs == 0 {
		return target, nil
	}
	total := info.State.Msgs
	if from > info.State.FirstSeq {
		total = min(total, target-from+1)
	}
	buffer := cfg.Buffer
	if buffer <= 0 {
		buffer = 4096
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       from,
		InactiveThreshold: ConsumerInactiveThreshold,
	})
	if err != nil {
		return 0, fmt.Errorf("replay %s: consumer: %w", s.Stream(), err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(buffer), jetstream.PullHeartbeat(ConsumerHeartbeat))
	if err != nil {
		return 0, fmt.Errorf("replay %s: consume: %w", s.Stream(), err)
	}
	defer it.Stop()

	start := time.Now()
	lastReport := start
	var done uint64
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return 0, fmt.Errorf("replay %s: %w", s.Stream(), err)
		}
		md, err := msg.Metadata()
		if err != nil {
			return 0, fmt.Errorf("replay %s: %w", s.Stream(), err)
		}
		seq := md.Sequence.Stream
		err = s.Records(msg.Subject(), msg.Data(), func(rec Record) error {
			rec.Time = md.Timestamp
			return apply(seq, rec)
		})
		if err != nil {
			return 0, err
		}
		done++
		if md.Sequence.Stream >= target || md.NumPending == 0 {
			if cfg.OnProgress != nil {
				cfg.OnProgress(progress(done, max(done, total), start))
			}
			return md.Sequence.Stream, nil
		}
		if cfg.ProgressEvery > 0 && cfg.OnProgress != nil {
			if now := time.Now(); now.Sub(lastReport) >= cfg.ProgressEvery {
				lastReport = now
				cfg.OnProgress(progress(done, max(done, total), start))
			}
		}
	}
}

func progress(done, total uint64, start time.Time) Progress {
	el := time.Since(start)
	p := Progress{Done: done, Total: total, Elapsed: el}
	if el > 0 {
		p.Rate = float64(done) / el.Seconds()
	}
	if p.Rate > 0 && total > done {
		p.ETA = time.Duration(float64(total-done) / p.Rate * float64(time.Second))
	}
	return p
}
