package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"

	"github.com/eddyrt/eddy"
)

// snapshot asks the nodes that run an actor type for a snapshot of its
// partitions now (eddy.Node.Snapshot) and prints each, as uploaded.
func (c *cli) snapshot(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("node snapshot", flag.ContinueOnError)
	cfg := eddy.DefaultConfig()
	cfg.NodeID = "snapshot"
	nf := addNodeFlags(fs, &cfg)
	lf := addLogFlags(fs, slog.LevelWarn)
	typ := fs.String("type", "", "the actor `type` whose partitions to snapshot (required)")
	part := fs.Int("partition", -1, "the `partition` to snapshot (-1: every one)")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if *typ == "" {
		return errors.New("--type is required")
	}
	if cfg.NATSURL == "" {
		return errors.New("--nats is required: the nodes that run the type take the snapshots")
	}
	node, err := c.startTool(ctx, &cfg, nf, lf)
	if err != nil {
		return err
	}
	defer func() { _ = node.Stop(context.Background()) }()
	rs, err := node.Snapshot(ctx, *typ, *part)
	for _, r := range rs {
		if r.Err != "" {
			fmt.Fprintf(c.stdout, "%s/%d on %s: no snapshot: %s\n", r.Type, r.Partition, r.Node, r.Err)
			continue
		}
		s := r.Snapshot
		fmt.Fprintf(c.stdout, "%s/%d on %s: changelog seq %d, offset %d, %d files, %s (%s uploaded now), %s\n",
			r.Type, r.Partition, r.Node, s.ChangelogSeq, s.Offset, s.Files, formatSize(s.Bytes), formatSize(s.Uploaded),
			s.Created.Format("2006-01-02 15:04:05.000"))
	}
	return err
}
