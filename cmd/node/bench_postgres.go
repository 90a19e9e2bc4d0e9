package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/internal/pgproc"
	"github.com/eddyrt/eddy/partition"
)

// The tables of `node bench postgres`: eddy's state table of the bench's
// actor type, and the raw side's table of the same shape.
const (
	pgStateTable = "eddy_state_" + benchType
	pgRawTable   = "eddy_bench_raw"
	// pgBenchDB is the database the bench makes on its throwaway server.
	pgBenchDB = "eddy_bench"
)

// pgRawUpsert is the raw side's batch: one statement, hence one transaction
// (autocommit) and one round trip, of the same shape as the write set of
// eddy's commit (postgres.Partition.Commit).
const pgRawUpsert = `INSERT INTO ` + pgRawTable + ` (partition, store, key, value)
SELECT $1, '` + partition.DefaultStore + `', k, v FROM unnest($2::bytea[], $3::bytea[]) AS u(k, v)
ON CONFLICT (partition, store, key) DO UPDATE SET value = EXCLUDED.value`

// pgBench is one run of `node bench postgres`: the JetStream bench's NATS
// server and input, a PostgreSQL server, and what the raw side writes.
type pgBench struct {
	*bench
	srv   *pgproc.Server // the throwaway server; nil with --pg-dsn
	dsn   string
	admin *pgx.Conn

	raw  pgRawPlan        // the raw side's transactions of the input
	want map[string]int64 // each key's count once every event is processed

	existingRows bool // --existing-rows: measure over existing rows too (runExisting)
}

// pgRawPlan is what the raw side writes for some input.
type pgRawPlan struct {
	// batches are the raw side's transactions, by partition: each batch of
	// BatchSize input events as the distinct keys it wrote and their
	// counts after it, msgpack-encoded as the handler stores them.
	batches [][]pgRawBatch
	rows    int // rows written, over all batches
}

type pgRawBatch struct{ keys, values [][]byte }

func (r pgRawPlan) transactions() int {
	n := 0
	for _, bs := range r.batches {
		n += len(bs)
	}
	return n
}

// benchPostgres measures eddy on PostgreSQL (ActorType.StateStore =
// PostgresStore) against raw batched upserts of the same rows into the same
// server, in one run: the input's events per second eddy processes, over
// those whose rows the raw side writes per second, is `bench: postgres
// ratio=`. Then, with --existing-rows, the same over rows a first half of
// the input left, with a new node's cold cache (runExisting): `bench:
// postgres existing-rows ratio=`.
func (c *cli) benchPostgres(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("node bench postgres", flag.ContinueOnError)
	cfg := eddy.DefaultConfig()
	addTuningFlags(fs, &cfg)
	lf := addLogFlags(fs, slog.LevelWarn)
	var o benchOptions
	durable, existingRows := true, true
	fs.IntVar(&o.events, "events", 200_000, "input `events`")
	fs.IntVar(&o.partitions, "partitions", 4, "`partitions` of the input stream")
	fs.IntVar(&o.keys, "keys", 100_000, "distinct `keys` of the input events (uniformly random)")
	fs.IntVar(&o.eventSize, "event-size", 32, "`bytes` of each input event")
	fs.IntVar(&o.runs, "runs", 3, "measure each side this many `times`, alternating, and report medians")
	fs.StringVar(&o.dir, "dir", "", "`directory` for NATS and the node's data (default: a temporary one, removed afterwards)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of each measured phase to `file`.<phase>-<run>")
	fs.DurationVar(&o.phaseTimeout, "phase-timeout", 10*time.Minute, "give up on a phase after this long")
	fs.Var(dsnFlag{&cfg.Postgres.DSN}, "pg-dsn", "PostgreSQL connection `string` to measure on instead of a throwaway server: a database without "+
		pgStateTable+", "+pgRawTable+" and "+benchType+" rows in eddy_runtime, which the bench makes and removes")
	fs.BoolVar(&durable, "pg-durable", durable, "run the throwaway server with fsync on (PostgreSQL's defaults), as deployed")
	fs.BoolVar(&existingRows, "existing-rows", existingRows, "measure again over existing rows: a new node (cold cache) processes a second half of --events "+
		"over the rows a first half left, against upserts of its rows into a table holding the first half's")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	switch {
	case o.events < 1 || o.partitions < 1 || o.keys < 1 || o.runs < 1:
		return errors.New("--events, --partitions, --keys and --runs must be positive")
	case o.eventSize < 0 || o.eventSize > cfg.MaxEventSize:
		return fmt.Errorf("--event-size %d: 0..%d", o.eventSize, cfg.MaxEventSize)
	}
	log, err := lf.logger(c.stderr)
	if err != nil {
		return err
	}
	b := &pgBench{bench: &bench{out: c, opts: o, log: log, dir: o.dir}, dsn: cfg.Postgres.DSN, existingRows: existingRows}
	cleanup, err := benchDir(&b.dir, "eddy-bench-postgres-")
	if err != nil {
		return err
	}
	defer cleanup()
	if b.dsn == "" {
		if b.srv, err = pgproc.Start(pgproc.Config{Durable: durable}); err != nil {
			return err
		}
		defer func() {
			if err := b.srv.Close(); err != nil {
				b.printf("  stop postgres: %v", err)
			}
		}()
		if err := b.srv.CreateDatabase(ctx, pgBenchDB); err != nil {
			return err
		}
		b.dsn = b.srv.DSN(pgBenchDB)
	}
	cfg.Postgres.DSN = b.dsn
	if err := cfg.Validate(); err != nil {
		return err
	}
	b.cfg = cfg
	if b.admin, err = pgx.Connect(ctx, b.dsn); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	defer b.admin.Close(context.WithoutCancel(ctx))
	if b.srv == nil {
		if err := checkNoTypeState(ctx, b.admin, benchType, pgRawTable); err != nil {
			return fmt.Errorf("--pg-dsn: %w", err)
		}
	}
	if err := b.startNATS(); err != nil {
		return err
	}
	defer b.stopNATS()
	return b.run(ctx, durable)
}

func (b *pgBench) run(ctx context.Context, durable bool) error {
	o := b.opts
	var version, fsync, syncCommit string
	if err := b.admin.QueryRow(ctx, `SELECT current_setting('server_version'), current_setting('fsync'), current_setting('synchronous_commit')`).
		Scan(&version, &fsync, &syncCommit); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	where := "a throwaway server"
	if b.srv == nil {
		where = "--pg-dsn"
	}
	b.printf("node bench postgres: %d events, %d partitions, %d keys, batches of %d events, %d run(s), GOMAXPROCS %d; PostgreSQL %s (%s, fsync=%s, synchronous_commit=%s) over TCP loopback",
		o.events, o.partitions, o.keys, b.cfg.BatchSize, o.runs, runtime.GOMAXPROCS(0), version, where, fsync, syncCommit)
	if err := b.preload(ctx); err != nil {
		return fmt.Errorf("preload: %w", err)
	}
	if err := b.plan(ctx); err != nil {
		return fmt.Errorf("read back the input: %w", err)
	}
	b.printf("  raw side (not timed): %d rows in %d transactions of up to %d rows (the distinct keys of each batch of %d events)",
		b.raw.rows, b.raw.transactions(), b.cfg.BatchSize, b.cfg.BatchSize)
	var eds, raws []time.Duration
	for run := range o.runs {
		if err := b.resetTables(ctx); err != nil {
			return err
		}
		var st pgEddyStats
		d, err := b.phase(ctx, "eddy-"+strconv.Itoa(run+1), func(ctx context.Context) (d time.Duration, err error) {
			d, st, err = b.eddyRun(ctx, "eddy-"+strconv.Itoa(run))
			return d, err
		})
		if err != nil {
			return fmt.Errorf("eddy, run %d: %w", run+1, err)
		}
		if err := b.check(ctx, pgStateTable, b.want); err != nil {
			return fmt.Errorf("eddy, run %d: %w", run+1, err)
		}
		eds = append(eds, d)
		b.printf("  run %d: eddy %d events in %v = %.0f ev/s (%.0f commits of %.0f events, %.1f ms each from the batch's start on average; CPU: bench process %.1f s, postgres %s)",
			run+1, o.events, d.Round(time.Millisecond), rate(o.events, d), st.commits, float64(o.events)/max(st.commits, 1),
			1000*st.commitSeconds/max(st.commits, 1), st.cpu.self.Seconds(), st.cpu.pgString())

		if err := b.resetTables(ctx); err != nil {
			return err
		}
		var cpu pgPhaseCPU
		d, err = b.phase(ctx, "raw-"+strconv.Itoa(run+1), func(ctx context.Context) (d time.Duration, err error) {
			d, cpu, err = b.rawRun(ctx, b.raw.batches, true)
			return d, err
		})
		if err != nil {
			return fmt.Errorf("raw, run %d: %w", run+1, err)
		}
		if err := b.check(ctx, pgRawTable, b.want); err != nil {
			return fmt.Errorf("raw, run %d: %w", run+1, err)
		}
		raws = append(raws, d)
		b.printf("  run %d: raw  %d rows in %v = %.0f rows/s, %.0f ev/s of input (%d transactions; CPU: bench process %.1f s, postgres %s)",
			run+1, b.raw.rows, d.Round(time.Millisecond), rate(b.raw.rows, d), rate(o.events, d), b.raw.transactions(), cpu.self.Seconds(), cpu.pgString())
	}
	if err := b.resetTables(ctx); err != nil {
		return err
	}
	ed, raw := median(eds), median(raws)
	b.printf("  medians: eddy %v = %.0f ev/s; raw %v = %.0f rows/s = %.0f ev/s of input (ratio: the raw side's time over eddy's for the same input)",
		ed.Round(time.Millisecond), rate(o.events, ed), raw.Round(time.Millisecond), rate(b.raw.rows, raw), rate(o.events, raw))
	b.printf("bench: postgres ratio=%.2f", rate(o.events, ed)/rate(o.events, raw))
	if !b.existingRows {
		return nil
	}
	return b.runExisting(ctx)
}

// plan reads the input stream back, untimed, and turns each partition's
// events into the raw side's batches and the count each key must end with.
func (b *pgBench) plan(ctx context.Context) error {
	in := b.input()
	keys := make([][]string, b.opts.partitions)
	_, err := b.readStream(ctx, benchType, 4096, func(msg jetstream.Msg) error {
		p, err := strconv.Atoi(strings.TrimPrefix(msg.Subject(), benchType+"."))
		if err != nil || p < 0 || p >= len(keys) {
			return fmt.Errorf("input subject %s: not a partition's", msg.Subject())
		}
		k, err := in.Key(p, msg.Subject(), msg.Headers())
		if err != nil {
			return err
		}
		keys[p] = append(keys[p], k)
		return nil
	})
	if err != nil {
		return err
	}
	b.want = map[string]int64{}
	b.raw, err = b.planRaw(keys, b.want)
	return err
}

// planRaw turns each partition's keys, in input order, into the raw side's
// batches of BatchSize events, counting them into want (the counts before
// them, on input that follows other input).
func (b *pgBench) planRaw(keys [][]string, want map[string]int64) (pgRawPlan, error) {
	r := pgRawPlan{batches: make([][]pgRawBatch, len(keys))}
	for p, ks := range keys {
		for i := 0; i < len(ks); i += b.cfg.BatchSize {
			var batch pgRawBatch
			seen := map[string]bool{}
			for _, k := range ks[i:min(i+b.cfg.BatchSize, len(ks))] {
				want[k]++
				if !seen[k] {
					seen[k] = true
					batch.keys = append(batch.keys, []byte(k))
				}
			}
			for _, k := range batch.keys {
				v, err := msgpack.Marshal(want[string(k)]) // an int64, as countEvent stores it
				if err != nil {
					return pgRawPlan{}, err
				}
				batch.values = append(batch.values, v)
			}
			r.batches[p] = append(r.batches[p], batch)
			r.rows += len(batch.keys)
		}
	}
	return r, nil
}

// pgExisting is the input measured over existing rows: two halves of
// --events over the same keys, what the raw side writes for each, and
// each key's count once the first half and once both are processed.
type pgExisting struct {
	first, second       []string // the halves' keys, in publish order
	firstRaw, secondRaw pgRawPlan
	wantFirst, want     map[string]int64
	// updates are the rows of secondRaw whose key the first half wrote.
	updates int
}

// existingInput draws the two halves, keys uniformly random as preload's
// (from a seed of their own), and plans the raw side's writes of each.
func (b *pgBench) existingInput() (*pgExisting, error) {
	o := b.opts
	rng := rand.New(rand.NewPCG(3, 4))
	draw := func() (keys []string, byPartition [][]string) {
		byPartition = make([][]string, o.partitions)
		for range o.events {
			k := "k" + strconv.Itoa(rng.IntN(o.keys))
			p := partition.Of(k, o.partitions)
			keys = append(keys, k)
			byPartition[p] = append(byPartition[p], k)
		}
		return keys, byPartition
	}
	first, firstByPartition := draw()
	second, secondByPartition := draw()
	x := &pgExisting{first: first, second: second, want: map[string]int64{}}
	var err error
	if x.firstRaw, err = b.planRaw(firstByPartition, x.want); err != nil {
		return nil, err
	}
	x.wantFirst = maps.Clone(x.want)
	if x.secondRaw, err = b.planRaw(secondByPartition, x.want); err != nil {
		return nil, err
	}
	for _, bs := range x.secondRaw.batches {
		for _, batch := range bs {
			for _, k := range batch.keys {
				if x.wantFirst[string(k)] > 0 {
					x.updates++
				}
			}
		}
	}
	return x, nil
}

// runExisting measures eddy against the raw side over existing rows, with
// a cold cache. In every run, the first half of the input is processed
// untimed (by an eddy node, which then stops, or as the raw side's
// upserts) and the second half is timed: on a new node, whose partitions
// are claimed at the stored offset and so read each batch's keys from
// PostgreSQL (one query a batch, for the keys their cache lacks), and as
// the raw side's upserts, which update the first half's rows where keys
// repeat. The second half's events per second on eddy, over those of the
// raw side, is `bench: postgres existing-rows ratio=`.
func (b *pgBench) runExisting(ctx context.Context) error {
	x, err := b.existingInput()
	if err != nil {
		return fmt.Errorf("over existing rows: %w", err)
	}
	events := len(x.second)
	b.printf("  over existing rows: each run processes a first half of %d events (not timed: %d keys; one eddy node, stopped, or %d rows of the raw side), then times a second half of %d events over the same %d keys",
		len(x.first), len(x.wantFirst), x.firstRaw.rows, events, b.opts.keys)
	b.printf("  (eddy: a new node, its partitions claimed at the stored offset with a cold cache; raw: %d rows in %d transactions, %d of them over a row of the first half)",
		x.secondRaw.rows, x.secondRaw.transactions(), x.updates)
	var eds, raws []time.Duration
	for run := range b.opts.runs {
		name := "existing-" + strconv.Itoa(run+1)
		if err := b.eddyFirstHalf(ctx, x, run); err != nil {
			return fmt.Errorf("eddy over existing rows, run %d: first half: %w", run+1, err)
		}
		var st pgEddyStats
		d, err := b.phase(ctx, "eddy-"+name, func(ctx context.Context) (d time.Duration, err error) {
			d, st, err = b.eddyRun(ctx, "eddy-"+name)
			return d, err
		})
		if err != nil {
			return fmt.Errorf("eddy over existing rows, run %d: %w", run+1, err)
		}
		if err := b.check(ctx, pgStateTable, x.want); err != nil {
			return fmt.Errorf("eddy over existing rows, run %d: %w", run+1, err)
		}
		eds = append(eds, d)
		b.printf("  run %d: eddy over existing rows %d events in %v = %.0f ev/s (%.0f commits of %.0f events, %.1f ms each from the batch's start on average; CPU: bench process %.1f s, postgres %s)",
			run+1, events, d.Round(time.Millisecond), rate(events, d), st.commits, float64(events)/max(st.commits, 1),
			1000*st.commitSeconds/max(st.commits, 1), st.cpu.self.Seconds(), st.cpu.pgString())

		if err := b.rawFirstHalf(ctx, x); err != nil {
			return fmt.Errorf("raw over existing rows, run %d: first half: %w", run+1, err)
		}
		var cpu pgPhaseCPU
		d, err = b.phase(ctx, "raw-"+name, func(ctx context.Context) (d time.Duration, err error) {
			d, cpu, err = b.rawRun(ctx, x.secondRaw.batches, false)
			return d, err
		})
		if err != nil {
			return fmt.Errorf("raw over existing rows, run %d: %w", run+1, err)
		}
		if err := b.check(ctx, pgRawTable, x.want); err != nil {
			return fmt.Errorf("raw over existing rows, run %d: %w", run+1, err)
		}
		raws = append(raws, d)
		b.printf("  run %d: raw  over existing rows %d rows in %v = %.0f rows/s, %.0f ev/s of input (%d transactions; CPU: bench process %.1f s, postgres %s)",
			run+1, x.secondRaw.rows, d.Round(time.Millisecond), rate(x.secondRaw.rows, d), rate(events, d), x.secondRaw.transactions(),
			cpu.self.Seconds(), cpu.pgString())
	}
	if err := b.resetTables(ctx); err != nil {
		return err
	}
	ed, raw := median(eds), median(raws)
	b.printf("  medians over existing rows: eddy %v = %.0f ev/s; raw %v = %.0f rows/s = %.0f ev/s of input",
		ed.Round(time.Millisecond), rate(events, ed), raw.Round(time.Millisecond), rate(x.secondRaw.rows, raw), rate(events, raw))
	b.printf("bench: postgres existing-rows ratio=%.2f", rate(events, ed)/rate(events, raw))
	return nil
}

// eddyFirstHalf brings the input and PostgreSQL to where eddy's timed run
// over existing rows starts: from empty tables and a new input stream,
// one node processes the first half and stops, then the second half is
// published. b.lastSeq is then each partition's last event of the second
// half (0: it has none, nothing to wait for).
func (b *pgBench) eddyFirstHalf(ctx context.Context, x *pgExisting, run int) error {
	ctx, cancel := context.WithTimeout(ctx, b.opts.phaseTimeout)
	defer cancel()
	if err := b.resetTables(ctx); err != nil {
		return err
	}
	// A new stream: the offsets the first half leaves must be those of
	// its events, whatever the stream held before.
	if err := b.js.DeleteStream(ctx, benchType); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("delete the input stream: %w", err)
	}
	err := partition.EnsureInputStream(ctx, b.js, b.input(), partition.StreamOptions{Replicas: 1, Duplicates: b.cfg.DuplicateWindow})
	if err != nil {
		return err
	}
	if b.lastSeq, err = b.publishInput(ctx, x.first, len(x.first)); err != nil {
		return err
	}
	if _, _, err := b.eddyRun(ctx, "eddy-first-half-"+strconv.Itoa(run+1)); err != nil {
		return err
	}
	if err := b.check(ctx, pgStateTable, x.wantFirst); err != nil {
		return err
	}
	if b.lastSeq, err = b.publishInput(ctx, x.second, len(x.first)+len(x.second)); err != nil {
		return fmt.Errorf("second half: %w", err)
	}
	return b.checkpoint(ctx) // as resetTables before a phase from empty tables
}

// rawFirstHalf makes the raw table hold the first half's rows.
func (b *pgBench) rawFirstHalf(ctx context.Context, x *pgExisting) error {
	ctx, cancel := context.WithTimeout(ctx, b.opts.phaseTimeout)
	defer cancel()
	if err := b.resetTables(ctx); err != nil {
		return err
	}
	if _, _, err := b.rawRun(ctx, x.firstRaw.batches, true); err != nil {
		return err
	}
	return b.checkpoint(ctx)
}

// publishInput publishes an event of each key, in order, to the input
// stream, which must then hold total events, and returns each partition's
// last sequence of them (0: none of them is the partition's).
func (b *pgBench) publishInput(ctx context.Context, keys []string, total int) ([]uint64, error) {
	var failed atomic.Int64
	js, err := jetstream.New(b.nc, jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { failed.Add(1) }))
	if err != nil {
		return nil, err
	}
	in := b.input()
	payload := make([]byte, b.opts.eventSize)
	has := make([]bool, in.Partitions)
	for _, k := range keys {
		has[partition.Of(k, in.Partitions)] = true
		if _, err := js.PublishMsgAsync(in.Msg(k, payload), jetstream.WithStallWait(time.Minute)); err != nil {
			return nil, err
		}
	}
	if err := waitAsync(ctx, js); err != nil {
		return nil, err
	}
	if n := failed.Load(); n > 0 {
		return nil, fmt.Errorf("%d events not stored", n)
	}
	st, err := b.js.Stream(ctx, benchType)
	if err != nil {
		return nil, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, err
	}
	if info.State.Msgs != uint64(total) {
		return nil, fmt.Errorf("input stream holds %d events, want %d", info.State.Msgs, total)
	}
	last := make([]uint64, in.Partitions)
	for p := range last {
		if !has[p] {
			continue
		}
		m, err := st.GetLastMsgForSubject(ctx, in.Filter(p))
		if err != nil {
			return nil, fmt.Errorf("last event of partition %d: %w", p, err)
		}
		last[p] = m.Sequence
	}
	return last, nil
}

// resetTables drops both sides' tables and the bench type's runtime and
// outbox rows, so that every phase starts from empty tables and offset 0,
// then checkpoints, so that every phase starts with the same WAL behind it
// (the first change of a page after a checkpoint logs the whole page).
func (b *pgBench) resetTables(ctx context.Context) error {
	if err := dropTypeState(ctx, b.admin, benchType, pgRawTable); err != nil {
		return fmt.Errorf("reset tables: %w", err)
	}
	if err := b.checkpoint(ctx); err != nil {
		return fmt.Errorf("reset tables: %w", err)
	}
	return nil
}

// checkpoint runs a CHECKPOINT (on --pg-dsn, if it may).
func (b *pgBench) checkpoint(ctx context.Context) error {
	if _, err := b.admin.Exec(ctx, `CHECKPOINT`); err != nil && b.srv != nil {
		return fmt.Errorf("checkpoint: %w", err) // not a superuser on --pg-dsn: go without
	}
	return nil
}

// checkNoTypeState fails if the database holds state of actor type typ
// or one of the tables in also: a bench on a database it was given drops
// only what it made.
func checkNoTypeState(ctx context.Context, conn *pgx.Conn, typ string, also ...string) error {
	var found []string
	for _, t := range append([]string{"eddy_state_" + typ}, also...) {
		var exists bool
		if err := conn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, pgx.Identifier{t}.Sanitize()).Scan(&exists); err != nil {
			return err
		}
		if exists {
			found = append(found, "table "+t)
		}
	}
	for _, t := range []string{"eddy_runtime", "eddy_outbox"} {
		var n int64
		err := conn.QueryRow(ctx, `SELECT count(*) FROM `+t+` WHERE type = $1`, typ).Scan(&n)
		var pe interface{ SQLState() string }
		switch {
		case errors.As(err, &pe) && pe.SQLState() == "42P01": // undefined_table
		case err != nil:
			return err
		case n > 0:
			found = append(found, fmt.Sprintf("%d rows of %s in %s", n, typ, t))
		}
	}
	if len(found) > 0 {
		return fmt.Errorf("the database holds %s: the bench makes and removes its own, so it needs a database without them (use another, or drop them)",
			strings.Join(found, ", "))
	}
	return nil
}

// dropTypeState removes what eddy keeps in PostgreSQL for actor type typ
// (its state table, its runtime and outbox rows) and the tables named in
// also, so that the type starts afresh, bound to no input stream.
func dropTypeState(ctx context.Context, conn *pgx.Conn, typ string, also ...string) error {
	tables := append([]string{"eddy_state_" + typ}, also...)
	for i, t := range tables {
		tables[i] = pgx.Identifier{t}.Sanitize()
	}
	drop := `DROP TABLE IF EXISTS ` + strings.Join(tables, ", ")
	if _, err := conn.Exec(ctx, drop); err != nil {
		return fmt.Errorf("%s: %w", drop, err)
	}
	for _, t := range []string{"eddy_runtime", "eddy_outbox"} {
		var exists bool
		if err := conn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, t).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			continue
		}
		if _, err := conn.Exec(ctx, `DELETE FROM `+t+` WHERE type = $1`, typ); err != nil {
			return fmt.Errorf("delete the rows of %s from %s: %w", typ, t, err)
		}
	}
	return nil
}

type pgEddyStats struct {
	commits, commitSeconds float64
	cpu                    pgPhaseCPU
}

// eddyRun runs a node (data directory name, removed afterwards) whose
// actor type counts the events of each key in PostgreSQL, from Start until
// every partition committed its event at lastSeq (the committed-offset
// gauge, set once the transaction landed, confirmed by Status).
func (b *pgBench) eddyRun(ctx context.Context, name string) (time.Duration, pgEddyStats, error) {
	dir := filepath.Join(b.dir, name)
	defer os.RemoveAll(dir)
	cpu := b.startCPU()
	start := time.Now()
	node, reg, err := b.node(ctx, dir, eddy.ActorType{Name: benchType, Partitions: b.opts.partitions, Handler: countEvent,
		StateStore: eddy.PostgresStore})
	if err != nil {
		if node != nil { // it failed to start
			err = errors.Join(err, stopNode(node))
		}
		return 0, pgEddyStats{}, err
	}
	err = b.waitCaughtUp(ctx, node, reg)
	took := time.Since(start)
	st := pgEddyStats{cpu: cpu.stop(), commits: sumCounter(reg, "eddy_partition_commits_total"),
		commitSeconds: sumCounter(reg, "eddy_partition_commit_seconds")}
	return took, st, errors.Join(err, stopNode(node))
}

// rawRun applies batches with one connection per partition, each batch
// one upsert statement, until the last batch committed: from creating the
// table (as eddy's partitions do when they start) with create, else into
// the table as it is.
func (b *pgBench) rawRun(ctx context.Context, batches [][]pgRawBatch, create bool) (time.Duration, pgPhaseCPU, error) {
	conns := make([]*pgx.Conn, b.opts.partitions)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close(context.WithoutCancel(ctx))
			}
		}
	}()
	for p := range conns {
		c, err := pgx.Connect(ctx, b.dsn)
		if err != nil {
			return 0, pgPhaseCPU{}, err
		}
		conns[p] = c
	}
	cpu := b.startCPU()
	start := time.Now()
	if create {
		if _, err := conns[0].Exec(ctx, `CREATE TABLE `+pgRawTable+` (
	partition integer NOT NULL,
	store     text    NOT NULL,
	key       bytea   NOT NULL,
	value     bytea   NOT NULL,
	PRIMARY KEY (partition, store, key)
)`); err != nil {
			return 0, pgPhaseCPU{}, err
		}
	}
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	for p, c := range conns {
		wg.Go(func() {
			for i, batch := range batches[p] {
				if _, err := c.Exec(ctx, pgRawUpsert, p, batch.keys, batch.values); err != nil {
					errs[p] = fmt.Errorf("partition %d, batch %d: %w", p, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	return took, cpu.stop(), errors.Join(errs...)
}

// check compares a table's rows with the count each key must end with.
func (b *pgBench) check(ctx context.Context, table string, want map[string]int64) error {
	rows, err := b.admin.Query(ctx, `SELECT key, value FROM `+table+` WHERE store = $1`, partition.DefaultStore)
	if err != nil {
		return fmt.Errorf("check %s: %w", table, err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var k, v []byte
		if err := rows.Scan(&k, &v); err != nil {
			return fmt.Errorf("check %s: %w", table, err)
		}
		var count int64
		if err := msgpack.Unmarshal(v, &count); err != nil {
			return fmt.Errorf("check %s: key %q: %w", table, k, err)
		}
		if w := want[string(k)]; count != w {
			return fmt.Errorf("check %s: key %q counted %d events, it has %d", table, k, count, w)
		}
		n++
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("check %s: %w", table, err)
	}
	if n != len(want) {
		return fmt.Errorf("check %s: %d keys, the input has %d", table, n, len(want))
	}
	return nil
}

// pgPhaseCPU is the CPU time a phase took in this process (eddy's node or
// the raw side's client, and the embedded NATS server) and in the
// throwaway PostgreSQL server's processes (negative: not known, on
// --pg-dsn or without /proc).
type pgPhaseCPU struct{ self, pg time.Duration }

func (c pgPhaseCPU) pgString() string {
	if c.pg < 0 {
		return "unknown"
	}
	return fmt.Sprintf("%.1f s", c.pg.Seconds())
}

type pgCPUMark struct {
	b        *pgBench
	self, pg time.Duration
}

func (b *pgBench) startCPU() pgCPUMark {
	return pgCPUMark{b: b, self: cpuTime(), pg: b.serverCPU()}
}

// stop is the CPU time since the mark. Call it before the phase's
// connections close: a backend's time leaves /proc with it.
func (m pgCPUMark) stop() pgPhaseCPU {
	c := pgPhaseCPU{self: cpuTime() - m.self, pg: -1}
	if pg := m.b.serverCPU(); pg >= 0 && m.pg >= 0 {
		c.pg = pg - m.pg
	}
	return c
}

// clockTick is the unit of the CPU times in /proc/<pid>/stat (USER_HZ,
// 100 on every Linux architecture Go runs on).
const clockTick = 10 * time.Millisecond

// serverCPU sums the user and system time of the throwaway server's
// postmaster and its children (backends, checkpointer, WAL writer), from
// /proc; -1 if it cannot.
func (b *pgBench) serverCPU() time.Duration {
	if b.srv == nil {
		return -1
	}
	pidFile, err := os.ReadFile(filepath.Join(b.srv.Dir(), "data", "postmaster.pid"))
	if err != nil {
		return -1
	}
	pm, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(pidFile), "\n", 2)[0]))
	if err != nil {
		return -1
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return -1
	}
	var total time.Duration
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // exited since the listing
		}
		// pid (comm) state ppid ... utime stime: fields 14 and 15, the
		// command name in parentheses possibly holding spaces.
		i := strings.LastIndexByte(string(stat), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 13 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		if pid != pm && ppid != pm {
			continue
		}
		utime, _ := strconv.ParseInt(f[11], 10, 64)
		stime, _ := strconv.ParseInt(f[12], 10, 64)
		total += time.Duration(utime+stime) * clockTick
	}
	return total
}
