// Package postgres is eddy's external state store: the state of an actor
// type kept in PostgreSQL, with the input offset of each partition
// committed in the same transaction as the data.
//
// The schema, created by EnsureType:
//
//   - eddy_state_<type> (partition, store, key, value): one table per actor
//     type; store is the named store ("state" for each key's own state),
//     key and value are bytes (values are msgpack, as handlers wrote them);
//   - eddy_runtime (type, partition) -> offset, epoch, owner, the input
//     stream's name and creation time, and the offset up to which a replay
//     suppresses side effects;
//   - eddy_outbox: the outbox entries of committed transactions, deleted
//     once forwarded.
//
// A commit (Partition.Commit) is one transaction, without XA: its first
// statement sets the new offset and epoch on the runtime row only where
// the stored epoch is not newer (and the owner is the committer's, at equal
// epochs) and the stored offset is older; zero rows updated means fenced or
// already committed, and the transaction rolls back. Then the write set and
// the outbox rows, then COMMIT. The row lock the first statement takes
// orders every commit of a partition: a zombie owner, resumed after a new
// owner claimed the partition (Partition.Claim raised the epoch), updates
// zero rows and can never commit.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrUnavailable wraps failures to reach PostgreSQL (connect, a timeout, a
// server going away): they may pass, and the caller retries.
var ErrUnavailable = errors.New("postgres: unavailable")

// DB is a node's connection pool to PostgreSQL, shared by its partitions.
type DB struct {
	cfg  Config
	pool *pgxpool.Pool

	mu      sync.Mutex
	ensured map[string]bool // the types whose tables EnsureType made sure of
}

// Open creates the pool; it connects lazily, so Open succeeds while the
// server is away (the first use fails with ErrUnavailable instead).
func Open(ctx context.Context, cfg Config) (*DB, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	pc, err := pgxpool.ParseConfig(cfg.DSN)
	if err != nil {
		// pgx's parse errors quote the DSN: say what is wrong without it.
		return nil, fmt.Errorf("%w: DSN %s does not parse", ErrInvalidConfig, Redact(cfg.DSN))
	}
	pc.MaxConns = cfg.MaxConns
	rp := pc.ConnConfig.RuntimeParams
	rp["idle_in_transaction_session_timeout"] = strconv.FormatInt(cfg.IdleInTransaction.Milliseconds(), 10)
	if cfg.ApplicationName != "" {
		rp["application_name"] = cfg.ApplicationName
	}
	// A dead server must not hang a connect for the OS's TCP timeout.
	if pc.ConnConfig.ConnectTimeout == 0 || pc.ConnConfig.ConnectTimeout > cfg.CommitTimeout {
		pc.ConnConfig.ConnectTimeout = cfg.CommitTimeout
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("postgres %s: %w", Redact(cfg.DSN), err)
	}
	return &DB{cfg: cfg, pool: pool, ensured: map[string]bool{}}, nil
}

// Close closes the pool once the connections in use are returned.
func (db *DB) Close() { db.pool.Close() }

// Config returns the config the DB was opened with.
func (db *DB) Config() Config { return db.cfg }

// Ping checks that the server answers.
func (db *DB) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, db.cfg.CommitTimeout)
	defer cancel()
	if err := db.pool.Ping(ctx); err != nil {
		return unavailable(err)
	}
	return nil
}

// unavailable marks err as a failure to reach the server, unless it is a
// server's error answer (a *pgconn.PgError), which says the server is there.
func unavailable(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) {
		return err
	}
	var pe interface{ SQLState() string }
	if errors.As(err, &pe) {
		return fmt.Errorf("postgres: %w", err)
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// stateTable is the table of actor type typ's state, quoted.
func stateTable(typ string) string { return pgx.Identifier{"eddy_state_" + typ}.Sanitize() }

// schemaLock serialises the DDL of nodes starting together (CREATE TABLE
// IF NOT EXISTS races on the catalog otherwise).
const schemaLock = 0x65646479 // "eddy"

// EnsureType creates the runtime and outbox tables and the state table of
// actor type typ when they do not exist. Once it succeeded for typ, it
// returns at once.
func (db *DB) EnsureType(ctx context.Context, typ string) error {
	db.mu.Lock()
	done := db.ensured[typ]
	db.mu.Unlock()
	if done {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 4*db.cfg.CommitTimeout)
	defer cancel()
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(schemaLock)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `
CREATE TABLE IF NOT EXISTS eddy_runtime (
	type           text        NOT NULL,
	partition      integer     NOT NULL,
	"offset"       bigint      NOT NULL DEFAULT 0,
	epoch          bigint      NOT NULL DEFAULT 0,
	owner          text        NOT NULL DEFAULT '',
	input_stream   text        NOT NULL DEFAULT '',
	input_created  timestamptz,
	replay_through bigint      NOT NULL DEFAULT 0,
	state_version  integer     NOT NULL DEFAULT 1,
	committed_at   timestamptz,
	PRIMARY KEY (type, partition)
);
CREATE TABLE IF NOT EXISTS eddy_outbox (
	type       text        NOT NULL,
	partition  integer     NOT NULL,
	"offset"   bigint      NOT NULL,
	idx        integer     NOT NULL,
	subject    text        NOT NULL,
	msg_id     text        NOT NULL,
	header     jsonb,
	data       bytea,
	created_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (type, partition, "offset", idx)
);
CREATE TABLE IF NOT EXISTS `+stateTable(typ)+` (
	partition integer NOT NULL,
	store     text    NOT NULL,
	key       bytea   NOT NULL,
	value     bytea   NOT NULL,
	PRIMARY KEY (partition, store, key)
);`)
		return err
	})
	if err != nil {
		return fmt.Errorf("create tables of %s: %w", typ, unavailable(err))
	}
	db.mu.Lock()
	db.ensured[typ] = true
	db.mu.Unlock()
	return nil
}

// Get reads the committed value of key in store of partition p of actor
// type typ, from any node (ok false when absent).
func (db *DB) Get(ctx context.Context, typ string, p int, store string, key []byte) (value []byte, ok bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, db.cfg.CommitTimeout)
	defer cancel()
	err = db.pool.QueryRow(ctx, `SELECT value FROM `+stateTable(typ)+` WHERE partition = $1 AND store = $2 AND key = $3`,
		p, store, key).Scan(&value)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read %s/%d: %w", typ, p, unavailable(err))
	}
	return value, true, nil
}

// Position is the runtime row of a partition: where its committed state
// stands.
type Position struct {
	// Offset is the input sequence of the last event whose effects are committed.
	Offset uint64
	// Epoch and Owner are the owner that claimed the partition last.
	Epoch uint64
	Owner string
	// InputStream and InputCreated identify the input stream Offset
	// belongs to (its name and creation time); zero before the first claim.
	InputStream  string
	InputCreated time.Time
	// ReplayThrough: events up to this offset were processed before a
	// reset (Reset); replaying them again suppresses their side effects.
	ReplayThrough uint64
	// StateVersion is the state version of the values.
	StateVersion int
	// CommittedAt is when the last commit landed (zero before the first).
	CommittedAt time.Time
}

// Positions returns the runtime rows of actor type typ, by partition.
func (db *DB) Positions(ctx context.Context, typ string) (map[int]Position, error) {
	ctx, cancel := context.WithTimeout(ctx, db.cfg.CommitTimeout)
	defer cancel()
	rows, err := db.pool.Query(ctx, `SELECT partition, `+positionColumns+` FROM eddy_runtime WHERE type = $1`, typ)
	if err != nil {
		return nil, unavailable(err)
	}
	out := map[int]Position{}
	for rows.Next() {
		var p int
		var pos Position
		if err := scanPosition(rows, &pos, &p); err != nil {
			return nil, err
		}
		out[p] = pos
	}
	return out, unavailable(rows.Err())
}

const positionColumns = `"offset", epoch, owner, input_stream, input_created, replay_through, state_version, committed_at`

func scanPosition(row pgx.Row, pos *Position, lead ...any) error {
	var offset, epoch, replay int64
	var created, committed *time.Time
	dest := append(lead, &offset, &epoch, &pos.Owner, &pos.InputStream, &created, &replay, &pos.StateVersion, &committed)
	if err := row.Scan(dest...); err != nil {
		return err
	}
	pos.Offset, pos.Epoch, pos.ReplayThrough = uint64(offset), uint64(epoch), uint64(replay)
	if created != nil {
		pos.InputCreated = *created
	}
	if committed != nil {
		pos.CommittedAt = *committed
	}
	return nil
}

// ResetReport says what Reset did to an actor type.
type ResetReport struct {
	// Partitions maps each partition reset to the offset up to which the
	// replay from the input stream's first event suppresses side effects
	// (0: the stream was recreated, nothing is suppressed).
	Partitions map[int]uint64
	// Rows is how many state rows were deleted.
	Rows int64
}

// Reset makes actor type typ's partitions rebuild their state from the
// input stream (the seed's rebuilding): it deletes the type's state rows
// and sets each partition's offset to 0, keeping its epoch (epochs never
// go down: an owner still running is fenced by the next claim, not
// confused). When the partition's offset belongs to the input stream
// created at inputCreated (the stream as it is), the offset it had
// committed is kept as replay_through, so that the replay suppresses the
// emits, sends, replies and dead letters that took effect the first time;
// when it belongs to another stream (deleted and created again), nothing
// of the new one was processed, so nothing is suppressed, and the next
// claim binds the partition to the new stream. Outbox rows not forwarded
// yet stay: the next owner forwards them, once. Run it with the type
// stopped on every node.
func (db *DB) Reset(ctx context.Context, typ string, inputCreated time.Time) (ResetReport, error) {
	rep := ResetReport{Partitions: map[int]uint64{}}
	inputCreated = inputCreated.Truncate(time.Microsecond) // what a timestamptz keeps
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `UPDATE eddy_runtime SET "offset" = 0,
	replay_through = CASE WHEN input_created = $2 THEN GREATEST(replay_through, "offset") ELSE 0 END
WHERE type = $1 RETURNING partition, replay_through`, typ, inputCreated)
		if err != nil {
			return err
		}
		for rows.Next() {
			var p int
			var through int64
			if err := rows.Scan(&p, &through); err != nil {
				return err
			}
			rep.Partitions[p] = uint64(through)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM `+stateTable(typ))
		if err != nil {
			return err
		}
		rep.Rows = tag.RowsAffected()
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("reset %s: %w", typ, unavailable(err))
	}
	return rep, nil
}
