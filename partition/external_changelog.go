package partition

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/statestore/postgres"
)

// A type on an external store may keep a changelog as well
// (Config.ExternalChangelog): each commit's write set goes, as one more
// outbox entry of the same transaction, to the stream EDDY_XCL_<type> on
// subject eddy.xcl.<type>.<p>, one message per commit, carrying the
// commit's offset and the offset of the commit before it. Forwarded like
// any outbox entry (after the transaction, in commit order, deduplicated by
// message id), the stream holds the partition's commits in order, each
// once.
//
// It restores a database that went back: when a partition finds the
// database's offset behind the commits in the changelog (the database was
// restored from a backup, or lost the type's rows and runtime row), it
// applies the changelog's commits after the database's offset, in order,
// before it takes input, instead of processing those events again (which
// would emit their outputs again, past the targets' duplicate window). It
// stops before the last commit, whose outputs may not all have reached
// their targets when its changelog entry did (a commit's entries are
// forwarded together, and a commit's only after the one before it is
// complete): that commit's events run again. The
// commits must follow each other from the database's offset on (each
// names the one before it); a changelog that does not reach back that far
// (its retention dropped older commits) cannot restore it, and the
// partition goes on from the database's own offset.
//
// The stream is not compacted: its retention is the user's (the limits of
// the stream, set on it), and a restore needs every commit since the
// database's backup.

// ExternalChangelogStream is the name of the changelog stream of actor type
// typ on an external store.
func ExternalChangelogStream(typ string) string { return "EDDY_XCL_" + typ }

// externalChangelogSubject is the subject of partition p's commits.
func externalChangelogSubject(typ string, p int) string {
	return "eddy.xcl." + typ + "." + strconv.Itoa(p)
}

// xclIndex is the outbox index of a commit's changelog entry: above any
// event's own entries at the same offset.
const xclIndex = 1 << 30

// xclCommit is one commit of the external store's changelog.
type xclCommit struct {
	Offset uint64     `msgpack:"o"`
	Prev   uint64     `msgpack:"p"` // the offset of the commit before it
	Epoch  uint64     `msgpack:"e"`
	Writes []xclWrite `msgpack:"w,omitempty"`
}

type xclWrite struct {
	Store string `msgpack:"s"`
	Key   []byte `msgpack:"k"`
	Value []byte `msgpack:"v,omitempty"`
	Del   bool   `msgpack:"d,omitempty"`
}

// xclEntry is the outbox entry that records commit c in the changelog.
func (a *partitionActor) xclEntry(c *postgres.Commit, prev uint64) (changelog.Outbox, error) {
	rec := xclCommit{Offset: c.Offset, Prev: prev, Epoch: c.Epoch, Writes: make([]xclWrite, len(c.Writes))}
	for i, w := range c.Writes {
		rec.Writes[i] = xclWrite{Store: w.Store, Key: w.Key, Value: w.Value, Del: w.Delete}
	}
	data, err := msgpack.Marshal(&rec)
	if err != nil {
		return changelog.Outbox{}, err
	}
	return changelog.Outbox{Offset: c.Offset, Index: xclIndex, Subject: externalChangelogSubject(a.cfg.Type, a.cfg.Partition),
		MsgID: a.msgID(c.Offset, "xcl"), Data: data}, nil
}

// ensureExternalChangelog creates the type's changelog stream if missing.
func (a *partitionActor) ensureExternalChangelog(ctx context.Context) error {
	opt := StreamOptions{Replicas: a.cfg.Changelog.Replicas, Duplicates: xclDuplicates}
	return EnsureStream(ctx, a.cfg.JS, ExternalChangelogStream(a.cfg.Type), []string{"eddy.xcl." + a.cfg.Type + ".*"}, opt)
}

// restoreFromExternalChangelog brings a database that is behind the
// changelog up to the changelog's last commit, and returns the offset it
// reached (pos.Offset when there was nothing to restore, or the changelog
// does not reach back to the database's offset).
func (a *partitionActor) restoreFromExternalChangelog(ctx context.Context, pos postgres.Position) (uint64, error) {
	st, err := a.cfg.JS.Stream(ctx, ExternalChangelogStream(a.cfg.Type))
	if err != nil {
		return 0, fmt.Errorf("changelog %s: %w", ExternalChangelogStream(a.cfg.Type), err)
	}
	subject := externalChangelogSubject(a.cfg.Type, a.cfg.Partition)
	lastMsg, err := st.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return pos.Offset, nil
	}
	if err != nil {
		return 0, fmt.Errorf("changelog %s: %w", subject, err)
	}
	var last xclCommit
	if err := msgpack.Unmarshal(lastMsg.Data, &last); err != nil {
		return 0, fmt.Errorf("changelog %s: last commit: %w", subject, err)
	}
	// The last commit's outputs may not all be in their targets (its
	// changelog entry went with them, not after them): the restore stops
	// at the commit before it, and the last commit's events run again.
	target := last.Prev
	if target <= pos.Offset {
		return pos.Offset, nil
	}
	a.log.Warn("the database is behind the changelog (restored from a backup, or lost its rows): restoring from the changelog",
		"database_offset", pos.Offset, "changelog_offset", last.Offset, "restore_to", target)
	start := time.Now()
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject},
		InactiveThreshold: changelog.ConsumerInactiveThreshold})
	if err != nil {
		return 0, fmt.Errorf("changelog %s: %w", subject, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return 0, fmt.Errorf("changelog %s: %w", subject, err)
	}
	defer it.Stop()
	var (
		at      = pos.Offset
		merged  = map[string]int{}
		c       = &postgres.Commit{Epoch: a.epoch, Owner: a.cfg.Owner}
		commits int
	)
	flush := func() error {
		if c.Offset <= at {
			return nil
		}
		c.Forwarded = c.Offset // outbox rows up to here were forwarded: later commits are in the changelog
		if err := a.ext.Commit(ctx, c); err != nil {
			return fmt.Errorf("restore from the changelog: %w", err)
		}
		at = c.Offset
		clear(merged)
		c.Writes = c.Writes[:0]
		return nil
	}
	for c.Offset < target {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return 0, fmt.Errorf("changelog %s: %w", subject, err)
		}
		var rec xclCommit
		if err := msgpack.Unmarshal(msg.Data(), &rec); err != nil {
			return 0, fmt.Errorf("changelog %s: %w", subject, err)
		}
		switch {
		case rec.Offset <= at:
			continue // in the database already
		case commits == 0 && rec.Prev != at:
			a.log.Error("the changelog does not reach back to the database's offset: going on from the database's own offset (the outputs of the events after it are emitted again)",
				"database_offset", at, "first_commit_after", rec.Offset, "it_follows", rec.Prev)
			return at, nil
		case commits > 0 && rec.Prev != c.Offset:
			return 0, fmt.Errorf("changelog %s: the commit at offset %d follows %d, not %d: commits are missing", subject, rec.Offset, rec.Prev, c.Offset)
		}
		for _, w := range rec.Writes {
			k := w.Store + "\x00" + string(w.Key)
			pw := postgres.Write{Store: w.Store, Key: w.Key, Value: w.Value, Delete: w.Del}
			if i, ok := merged[k]; ok {
				c.Writes[i] = pw
			} else {
				merged[k] = len(c.Writes)
				c.Writes = append(c.Writes, pw)
			}
		}
		c.Offset = rec.Offset
		commits++
		if len(c.Writes) >= restoreFlushWrites {
			if err := flush(); err != nil {
				return 0, err
			}
		}
	}
	if err := flush(); err != nil {
		return 0, err
	}
	a.restorePath = restoreChangelog
	a.log.Info("restored from the changelog", "commits", commits, "offset", at, "took", time.Since(start).Round(time.Millisecond))
	return at, nil
}

// xclDuplicates is the duplicate window of the changelog stream: a commit's
// entry forwarded again after a failover is dropped within it (the node's
// default for the streams it creates).
const xclDuplicates = 10 * time.Minute

// restoreFlushWrites is the most writes one transaction of a restore from
// the changelog holds: few round trips, transactions of a few MB.
const restoreFlushWrites = 4096
