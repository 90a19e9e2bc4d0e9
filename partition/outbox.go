package partition

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/changelog"
)

// The outbox is forwarded with message ids, and the targets deduplicate an
// entry forwarded twice — within their duplicate window. An entry is
// forwarded again only by whoever restores the partition after its owner
// forwarded it but died before the forwarded mark reached the changelog
// (MarkDelay later, normally). When that gap outgrows the target's window
// (NATS away for longer than it, say), deduplication no longer holds, so
// checkOutbox looks for such entries in their targets before forwarding them.

// outboxSkew is how far before an entry's commit time its target is
// searched: the commit time comes from the changelog's server or the old
// owner's clock, the target's times from its server.
const outboxSkew = time.Minute

// checkOutbox splits restored outbox entries into those to forward and those
// already in their target stream. Entries committed longer ago than half
// their target's duplicate window are looked for in the target, by message
// id, on their subject from the oldest one's commit time on (one scan per
// subject); those found there are not forwarded again. Newer entries, and
// entries whose commit time is unknown, are left to the target's
// deduplication.
func (a *partitionActor) checkOutbox(ctx context.Context, outs []pending) (forward, there []pending, err error) {
	type group struct {
		stream jetstream.Stream
		since  time.Time
		old    []pending
	}
	windows := map[string]time.Duration{} // by target stream
	groups := map[string]*group{}         // old entries by subject
	var order []string
	for _, p := range outs {
		if p.at.IsZero() {
			forward = append(forward, p)
			continue
		}
		g := groups[p.out.Subject]
		if g == nil {
			name, err := a.cfg.JS.StreamNameBySubject(ctx, p.out.Subject)
			if err != nil {
				return nil, nil, fmt.Errorf("outbox target %s: %w", p.out.Subject, err)
			}
			st, err := a.cfg.JS.Stream(ctx, name)
			if err != nil {
				return nil, nil, fmt.Errorf("outbox target %s: %w", name, err)
			}
			windows[name] = st.CachedInfo().Config.Duplicates
			g = &group{stream: st, since: p.at}
			groups[p.out.Subject] = g
			order = append(order, p.out.Subject)
		}
		if time.Since(p.at) < windows[g.stream.CachedInfo().Config.Name]/2 {
			forward = append(forward, p)
			continue
		}
		g.old = append(g.old, p)
		if p.at.Before(g.since) {
			g.since = p.at
		}
	}
	for _, subject := range order {
		g := groups[subject]
		if len(g.old) == 0 {
			continue
		}
		want := make(map[string]bool, len(g.old))
		for _, p := range g.old {
			want[p.out.MsgID] = true
		}
		found, err := findMsgIDs(ctx, g.stream, subject, want, g.since.Add(-outboxSkew))
		if err != nil {
			return nil, nil, fmt.Errorf("outbox target %s: %w", g.stream.CachedInfo().Config.Name, err)
		}
		n := 0
		for _, p := range g.old {
			if found[p.out.MsgID] {
				there = append(there, p)
				n++
			} else {
				forward = append(forward, p)
			}
		}
		if n > 0 {
			a.m.outboxFound.Add(float64(n))
			a.log.Warn("outbox entries committed longer ago than their target's duplicate window are there already: not forwarding them again",
				"entries", n, "subject", subject, "stream", g.stream.CachedInfo().Config.Name,
				"oldest", g.since.Format(time.RFC3339), "window", windows[g.stream.CachedInfo().Config.Name])
		}
	}
	return forward, there, nil
}

// findMsgIDs returns which of the message ids in want stream st holds on
// subject, stored at or after since.
func findMsgIDs(ctx context.Context, st jetstream.Stream, subject string, want map[string]bool, since time.Time) (map[string]bool, error) {
	cons, err := st.CreateConsumer(ctx, jetstream.ConsumerConfig{
		FilterSubject:     subject,
		DeliverPolicy:     jetstream.DeliverByStartTimePolicy,
		OptStartTime:      &since,
		AckPolicy:         jetstream.AckNonePolicy,
		HeadersOnly:       true,
		InactiveThreshold: changelog.ConsumerInactiveThreshold,
	})
	if err != nil {
		return nil, err
	}
	defer func() { _ = st.DeleteConsumer(context.WithoutCancel(ctx), cons.CachedInfo().Name) }()
	found := map[string]bool{}
	left := cons.CachedInfo().NumPending
	for left > 0 && len(found) < len(want) {
		batch, err := cons.Fetch(int(min(left, 1024)), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, err
		}
		n := uint64(0)
		for msg := range batch.Messages() {
			n++
			if id := msg.Headers().Get(jetstream.MsgIDHeader); want[id] {
				found[id] = true
			}
		}
		if err := batch.Error(); err != nil {
			return nil, err
		}
		if n == 0 {
			return nil, fmt.Errorf("%d messages pending on %s, none delivered", left, subject)
		}
		left -= min(n, left)
	}
	return found, nil
}
