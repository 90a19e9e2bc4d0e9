package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/partition"
	"github.com/eddyrt/eddy/table"
)

// benchTableName is the global table (and stream) of `node bench table`.
const benchTableName = "bench_products"

// benchTable measures a global table's bootstrap against a raw ordered read
// of the same stream, in one run: the table's records per second over the
// raw read's is `bench: global table bootstrap ratio=`.
func (c *cli) benchTable(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("node bench table", flag.ContinueOnError)
	lf := addLogFlags(fs, slog.LevelWarn)
	var o benchOptions
	var valueSize int
	fs.IntVar(&o.keys, "keys", 1_000_000, "distinct `keys` of the table, one record each")
	fs.IntVar(&valueSize, "value-size", 64, "`bytes` of each value")
	fs.IntVar(&o.runs, "runs", 3, "measure each side this many `times` and report medians")
	fs.StringVar(&o.dir, "dir", "", "`directory` for NATS and the tables (default: a temporary one, removed afterwards)")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if o.keys < 1 || o.runs < 1 || valueSize < 1 {
		return errors.New("--keys, --runs and --value-size must be positive")
	}
	log, err := lf.logger(c.stderr)
	if err != nil {
		return err
	}
	b := &bench{out: c, cfg: eddy.DefaultConfig(), opts: o, log: log, dir: o.dir}
	cleanup, err := benchDir(&b.dir, "eddy-bench-table-")
	if err != nil {
		return err
	}
	defer cleanup()
	if err := b.startNATS(); err != nil {
		return err
	}
	defer b.stopNATS()
	b.printf("node bench table: %d keys, %d B values, compacted stream (one subject per key), NATS over TCP loopback", o.keys, valueSize)
	if err := b.loadTable(ctx, valueSize); err != nil {
		return err
	}
	var raws, tables []float64
	for run := range o.runs {
		n, took, err := b.rawTableRead(ctx)
		if err != nil {
			return fmt.Errorf("raw read: %w", err)
		}
		raws = append(raws, rate(int(n), took))
		n, took, err = b.tableBootstrap(ctx, run)
		if err != nil {
			return fmt.Errorf("table bootstrap: %w", err)
		}
		tables = append(tables, rate(int(n), took))
		b.printf("  run %d: raw read %.0f rec/s, table bootstrap %.0f rec/s (%d records in %v)", run+1, raws[run], tables[run], n, took.Round(time.Millisecond))
	}
	raw, tbl := medianF(raws), medianF(tables)
	b.printf("bench: global table bootstrap ratio=%.2f table=%.0f raw=%.0f records=%d", tbl/raw, tbl, raw, o.keys)
	return nil
}

// loadTable fills the table's stream with one record per key.
func (b *bench) loadTable(ctx context.Context, valueSize int) error {
	opt := partition.StreamOptions{Replicas: 1, Duplicates: time.Minute}
	if err := partition.EnsureTableStream(ctx, b.js, partition.Input{Type: benchTableName, Partitions: 1, KeyedSubjects: true}, opt); err != nil {
		return err
	}
	value, err := msgpack.Marshal(string(make([]byte, valueSize)))
	if err != nil {
		return err
	}
	start := time.Now()
	for k := range b.opts.keys {
		if _, err := b.js.PublishAsync(benchTableName+".k"+strconv.Itoa(k), value, jetstream.WithStallWait(time.Minute)); err != nil {
			return err
		}
	}
	select {
	case <-b.js.PublishAsyncComplete():
	case <-ctx.Done():
		return ctx.Err()
	}
	b.printf("  loaded (not timed): %d records in %v", b.opts.keys, time.Since(start).Round(time.Millisecond))
	return nil
}

// rawTableRead reads the whole stream with an ordered consumer: the least
// a bootstrap must do.
func (b *bench) rawTableRead(ctx context.Context) (uint64, time.Duration, error) {
	var n uint64
	took, err := b.readStream(ctx, benchTableName, 2*table.DefaultGlobalConfig().Batch, func(jetstream.Msg) error { n++; return nil })
	return n, took, err
}

// tableBootstrap starts a global table on an empty store and times it
// until it is ready.
func (b *bench) tableBootstrap(ctx context.Context, run int) (uint64, time.Duration, error) {
	dir := filepath.Join(b.dir, "table-"+strconv.Itoa(run))
	defer os.RemoveAll(dir)
	cfg := table.DefaultGlobalConfig()
	cfg.Name, cfg.Stream, cfg.JS, cfg.StoreDir, cfg.Logger = benchTableName, benchTableName, b.js, dir, b.log
	in := partition.Input{Type: benchTableName, Partitions: 1, KeyedSubjects: true}
	cfg.Key = func(subject string, h nats.Header) (string, error) { return in.Key(0, subject, h) }
	start := time.Now()
	g, err := table.StartGlobal(ctx, cfg)
	if err != nil {
		return 0, 0, err
	}
	select {
	case <-g.Ready():
	case <-ctx.Done():
		return 0, 0, errors.Join(ctx.Err(), g.Stop())
	}
	took := time.Since(start)
	n := g.Applied()
	return n, took, g.Stop()
}
