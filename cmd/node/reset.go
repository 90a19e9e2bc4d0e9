package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"

	"github.com/eddyrt/eddy"
)

// reset resets an actor type (eddy.Node.Reset): it deletes the type's
// changelog streams and snapshots, so that the next node to run the type processes its
// input from the first event, and prints what it deleted and what it left.
// It refuses while any node runs the type. Without --nats it opens the
// embedded NATS server of --data-dir, which must not be running. With
// --pg-dsn it resets the type's state in PostgreSQL too (eddy.ResetReport.Postgres).
func (c *cli) reset(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("node reset", flag.ContinueOnError)
	cfg := eddy.DefaultConfig()
	cfg.NodeID = "reset"
	nf := addNodeFlags(fs, &cfg)
	lf := addLogFlags(fs, slog.LevelWarn)
	typ := fs.String("type", "", "the actor `type` to reset (required)")
	dryRun := fs.Bool("dry-run", false, "list what the reset would delete, and delete nothing")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if *typ == "" {
		return errors.New("--type is required")
	}
	node, err := c.startTool(ctx, &cfg, nf, lf)
	if err != nil {
		if cfg.NATSURL == "" {
			return fmt.Errorf("%w (is a node with the embedded NATS server of %s running? stop it first)", err, cfg.DataDir)
		}
		return err
	}
	defer func() { _ = node.Stop(context.Background()) }()
	r, err := node.Reset(ctx, *typ, *dryRun)
	if err != nil {
		return err
	}
	verb := "deleted"
	if r.DryRun {
		verb = "would delete (dry run)"
	}
	if len(r.Deleted) == 0 {
		fmt.Fprintf(c.stdout, "reset %s: no changelog or snapshot stream to delete\n", r.Type)
	} else {
		fmt.Fprintf(c.stdout, "reset %s: %s %d streams (changelogs, snapshots): %s\n", r.Type, verb, len(r.Deleted), strings.Join(r.Deleted, " "))
	}
	if r.Postgres != nil {
		var ps []string
		for _, p := range slices.Sorted(maps.Keys(r.Postgres)) {
			ps = append(ps, fmt.Sprintf("%d:%d", p, r.Postgres[p]))
		}
		if r.DryRun {
			fmt.Fprintf(c.stdout, "reset %s in PostgreSQL: would delete its state rows and replay every partition from offset 0 (committed offsets %s)\n", r.Type, strings.Join(ps, " "))
		} else {
			fmt.Fprintf(c.stdout, "reset %s in PostgreSQL: deleted %d state rows; each partition replays from offset 0, its side effects suppressed up to (partition:offset) %s\n",
				r.Type, r.PostgresRows, strings.Join(ps, " "))
		}
	}
	left := "none"
	if len(r.Left) > 0 {
		left = strings.Join(r.Left, " ")
	}
	fmt.Fprintf(c.stdout, "left as they are: %s, and the streams %s emitted to\n", left, r.Type)
	if !r.DryRun && len(r.Deleted) > 0 {
		fmt.Fprintf(c.stdout, "the next node to run %s discards its local stores and processes the input from its first event\n", r.Type)
	}
	return nil
}

// startTool starts a node without actor types for a command that talks to
// the nodes over NATS (reset, snapshot): it serves no HTTP and runs nothing.
func (c *cli) startTool(ctx context.Context, cfg *eddy.Config, nf *nodeFlags, lf *logFlags) (*eddy.Node, error) {
	log, err := lf.logger(c.stderr)
	if err != nil {
		return nil, err
	}
	cfg.Logger = log
	cfg.HTTPAddr = ""
	if cfg.NATSOptions, err = nf.natsOptions(); err != nil {
		return nil, err
	}
	node, err := eddy.NewNode(*cfg)
	if err != nil {
		return nil, err
	}
	return node, node.Start(ctx)
}
