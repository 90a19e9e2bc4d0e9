package eddy

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/partition"
	"github.com/eddyrt/eddy/statestore/postgres"
)

// Actor types whose StateStore is PostgresStore keep their state in
// PostgreSQL (package statestore/postgres, partition/external.go). The node
// opens one pool for them (Config.Postgres); partitions create the tables
// when they first start, so a node starts while PostgreSQL is away, and
// its partitions retry until it answers. Queries of such a type read the
// database from whichever node is asked: every node sees every key's
// committed value, without asking the owner.

// openPostgres opens the pool of the external store when a registered
// type keeps its state there. It does not connect: PostgreSQL may come up
// after the node.
func (n *Node) openPostgres(ctx context.Context) error {
	need := n.cfg.Postgres.DSN != "" // node reset resets a type it does not run
	for _, name := range n.order {
		need = need || n.types[name].external()
	}
	if !need {
		return nil
	}
	db, err := postgres.Open(ctx, n.cfg.Postgres)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.pg = db
	n.mu.Unlock()
	n.log.Info("external state store", "postgres", postgres.Redact(n.cfg.Postgres.DSN))
	return nil
}

// queryExternal reads key of store of partition k from PostgreSQL.
func (n *Node) queryExternal(ctx context.Context, k pkey, store, key string) ([]byte, error) {
	n.mu.Lock()
	db := n.pg
	n.mu.Unlock()
	if db == nil {
		return nil, ErrNotRunning
	}
	v, ok, err := db.Get(ctx, k.typ, k.p, store, []byte(key))
	switch {
	case err != nil:
		return nil, fmt.Errorf("%w: %s: %w", ErrUnavailable, k, err)
	case !ok:
		return nil, fmt.Errorf("%w: %s/%q", ErrNotFound, k.typ, key)
	}
	return v, nil
}

// resetExternal resets actor type typ's state in PostgreSQL, if it has
// any there (postgres.DB.Reset): its partitions rebuild from the input
// stream, with the side effects of the events processed before
// suppressed.
func (n *Node) resetExternal(ctx context.Context, js jetstream.JetStream, typ string, r *ResetReport) error {
	n.mu.Lock()
	db := n.pg
	n.mu.Unlock()
	if db == nil {
		return nil
	}
	pos, err := db.Positions(ctx, typ)
	if err != nil {
		return fmt.Errorf("eddy: reset %s: %w", typ, err)
	}
	if len(pos) == 0 {
		return nil
	}
	r.Postgres = map[int]uint64{}
	for p, at := range pos {
		r.Postgres[p] = at.Offset
	}
	if r.DryRun {
		return nil
	}
	var created time.Time // no input stream: nothing of a new one to suppress
	if st, err := js.Stream(ctx, typ); err == nil {
		created = st.CachedInfo().Created
	} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("eddy: reset %s: input stream: %w", typ, err)
	}
	rep, err := db.Reset(ctx, typ, created)
	if err != nil {
		return fmt.Errorf("eddy: reset %s: %w", typ, err)
	}
	r.Postgres, r.PostgresRows = rep.Partitions, rep.Rows
	return nil
}

// externalDown tells whether a partition stopped for a reason of its
// external store that no other node can get past (an input stream
// recreated under its offset): it keeps its slot, and says why.
func externalDown(err error) bool { return errors.Is(err, partition.ErrInputRecreated) }
