package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
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

	// batches are the raw side's transactions, by partition: each batch of
	// BatchSize input events as the distinct keys it wrote and their
	// counts after it, msgpack-encoded as the handler stores them.
	batches [][]pgRawBatch
	rows    int              // rows the raw side writes, over all batches
	want    map[string]int64 // each key's count once every event is processed
}

type pgRawBatch struct{ keys, values [][]byte }

// benchPostgres measures eddy on PostgreSQL (ActorType.StateStore =
// PostgresStore) against raw batched upserts of the same rows into the same
// server, in one run: the input's events per second eddy processes, over
// those whose rows the raw side writes per second, is `bench: postgres
// ratio=`.
func (c *cli) benchPostgres(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("node bench postgres", flag.ContinueOnError)
	cfg := eddy.DefaultConfig()
	addTuningFlags(fs, &cfg)
	lf := addLogFlags(fs, slog.LevelWarn)
	var o benchOptions
	durable := true
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
	b := &pgBench{bench: &bench{out: c, opts: o, log: log, dir: o.dir}, dsn: cfg.Postgres.DSN}
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
		b.rows, b.transactions(), b.cfg.BatchSize, b.cfg.BatchSize)
	var eds, raws []time.Duration
	for run := range o.runs {
		if err := b.resetTables(ctx); err != nil {
			return err
		}
		var st pgEddyStats
		d, err := b.phase(ctx, "eddy-"+strconv.Itoa(run+1), func(ctx context.Context) (d time.Duration, err error) {
			d, st, err = b.eddyRun(ctx, run)
			return d, err
		})
		if err != nil {
			return fmt.Errorf("eddy, run %d: %w", run+1, err)
		}
		if err := b.check(ctx, pgStateTable); err != nil {
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
			d, cpu, err = b.rawRun(ctx)
			return d, err
		})
		if err != nil {
			return fmt.Errorf("raw, run %d: %w", run+1, err)
		}
		if err := b.check(ctx, pgRawTable); err != nil {
			return fmt.Errorf("raw, run %d: %w", run+1, err)
		}
		raws = append(raws, d)
		b.printf("  run %d: raw  %d rows in %v = %.0f rows/s, %.0f ev/s of input (%d transactions; CPU: bench process %.1f s, postgres %s)",
			run+1, b.rows, d.Round(time.Millisecond), rate(b.rows, d), rate(o.events, d), b.transactions(), cpu.self.Seconds(), cpu.pgString())
	}
	if err := b.resetTables(ctx); err != nil {
		return err
	}
	ed, raw := median(eds), median(raws)
	b.printf("  medians: eddy %v = %.0f ev/s; raw %v = %.0f rows/s = %.0f ev/s of input (ratio: the raw side's time over eddy's for the same input)",
		ed.Round(time.Millisecond), rate(o.events, ed), raw.Round(time.Millisecond), rate(b.rows, raw), rate(o.events, raw))
	b.printf("bench: postgres ratio=%.2f", rate(o.events, ed)/rate(o.events, raw))
	return nil
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
	b.batches = make([][]pgRawBatch, len(keys))
	b.rows = 0
	for p, ks := range keys {
		for i := 0; i < len(ks); i += b.cfg.BatchSize {
			var batch pgRawBatch
			seen := map[string]bool{}
			for _, k := range ks[i:min(i+b.cfg.BatchSize, len(ks))] {
				b.want[k]++
				if !seen[k] {
					seen[k] = true
					batch.keys = append(batch.keys, []byte(k))
				}
			}
			for _, k := range batch.keys {
				v, err := msgpack.Marshal(b.want[string(k)]) // an int64, as countEvent stores it
				if err != nil {
					return err
				}
				batch.values = append(batch.values, v)
			}
			b.batches[p] = append(b.batches[p], batch)
			b.rows += len(batch.keys)
		}
	}
	return nil
}

func (b *pgBench) transactions() int {
	n := 0
	for _, bs := range b.batches {
		n += len(bs)
	}
	return n
}

// resetTables drops both sides' tables and the bench type's runtime and
// outbox rows, so that every phase starts from empty tables and offset 0,
// then checkpoints, so that every phase starts with the same WAL behind it
// (the first change of a page after a checkpoint logs the whole page).
func (b *pgBench) resetTables(ctx context.Context) error {
	if err := dropTypeState(ctx, b.admin, benchType, pgRawTable); err != nil {
		return fmt.Errorf("reset tables: %w", err)
	}
	if _, err := b.admin.Exec(ctx, `CHECKPOINT`); err != nil && b.srv != nil {
		return fmt.Errorf("reset tables: checkpoint: %w", err) // not a superuser on --pg-dsn: go without
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

// eddyRun runs a node whose actor type counts the events of each key in
// PostgreSQL, from Start until every partition committed its last input
// event (the committed-offset gauge, set once the transaction landed,
// confirmed by Status).
func (b *pgBench) eddyRun(ctx context.Context, run int) (time.Duration, pgEddyStats, error) {
	dir := filepath.Join(b.dir, "eddy-"+strconv.Itoa(run))
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

// rawRun applies the batches with one connection per partition, each
// batch one upsert statement, from creating the table (as eddy's
// partitions do when they start) until the last batch committed.
func (b *pgBench) rawRun(ctx context.Context) (time.Duration, pgPhaseCPU, error) {
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
	if _, err := conns[0].Exec(ctx, `CREATE TABLE `+pgRawTable+` (
	partition integer NOT NULL,
	store     text    NOT NULL,
	key       bytea   NOT NULL,
	value     bytea   NOT NULL,
	PRIMARY KEY (partition, store, key)
)`); err != nil {
		return 0, pgPhaseCPU{}, err
	}
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	for p, c := range conns {
		wg.Go(func() {
			for i, batch := range b.batches[p] {
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
func (b *pgBench) check(ctx context.Context, table string) error {
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
		if want := b.want[string(k)]; count != want {
			return fmt.Errorf("check %s: key %q counted %d events, it has %d", table, k, count, want)
		}
		n++
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("check %s: %w", table, err)
	}
	if n != len(b.want) {
		return fmt.Errorf("check %s: %d keys, the input has %d", table, n, len(b.want))
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
