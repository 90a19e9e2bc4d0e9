package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/examples/apps"
)

// defaultPartitions is each example actor type's partition count unless
// --partitions says otherwise: a few per core of a small node, and room to
// spread over a cluster of up to 8 nodes.
const defaultPartitions = 8

// stopTimeout bounds the graceful stop: each partition finishes its batch in hand.
const stopTimeout = 30 * time.Second

// run starts a node with the actor types of the example apps and runs it until
// ctx ends (SIGINT or SIGTERM), then stops it gracefully.
func (c *cli) run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("node run", flag.ContinueOnError)
	cfg := eddy.DefaultConfig()
	nf := addNodeFlags(fs, &cfg)
	addTuningFlags(fs, &cfg)
	addClusterFlags(fs, &cfg)
	lf := addLogFlags(fs, slog.LevelInfo)
	appList := fs.String("app", "bank", "example `apps` to run, comma-separated: "+strings.Join(apps.Names, ", "))
	partitions := fs.Int("partitions", defaultPartitions, "`partitions` of each actor type's input stream (fixed once the stream exists)")
	replicas := fs.Int("replicas", eddy.DefaultReplicationFactor, "hot `replicas` per partition on other nodes of a cluster (0: none, restore from the changelog on failover)")
	stateStore := fs.String("state-store", string(eddy.LocalStore), "where the apps' actor types keep their state: local (pebble and a changelog) or postgres (--pg-dsn)")
	pgChangelog := fs.Bool("pg-changelog", false, "with --state-store postgres: keep a changelog of the state too (EDDY_XCL_<type>), which brings a database restored from a backup forward")
	load := fs.Float64("load", 0, "demo load in `events/s`, sent with an eddy.Client (0: off)")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	log, err := lf.logger(c.stderr)
	if err != nil {
		return err
	}
	cfg.Logger = log
	if cfg.NATSOptions, err = nf.natsOptions(); err != nil {
		return err
	}
	if *load < 0 {
		return fmt.Errorf("--load %v: want events/s, or 0 for none", *load)
	}
	var names []string
	var types []eddy.ActorType
	for _, app := range strings.Split(*appList, ",") {
		app = strings.TrimSpace(app)
		if app == "" || slices.Contains(names, app) {
			continue
		}
		ts, err := apps.ActorTypes(app, *partitions)
		if err != nil {
			return err
		}
		for i := range ts {
			ts[i].ReplicationFactor = *replicas
			if *replicas == 0 {
				ts[i].ReplicationFactor = eddy.NoReplicas
			}
			if ts[i].StateStore = eddy.StateStore(*stateStore); ts[i].StateStore == eddy.PostgresStore {
				ts[i].ReplicationFactor = eddy.NoReplicas // the data is in the database
				ts[i].ExternalChangelog = *pgChangelog
			}
		}
		names = append(names, app)
		types = append(types, ts...)
	}
	if len(names) == 0 {
		return errors.New("--app: name at least one app: " + strings.Join(apps.Names, ", "))
	}

	node, err := eddy.NewNode(cfg)
	if err != nil {
		return err
	}
	for _, t := range types {
		if err := node.Register(t); err != nil {
			return err
		}
	}
	for _, app := range names {
		for _, t := range apps.GlobalTables(app) {
			if err := node.RegisterGlobalTable(t); err != nil {
				return err
			}
		}
	}
	if err := node.Start(ctx); err != nil {
		return err
	}
	stopNode := func() error {
		sctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		return node.Stop(sctx)
	}
	natsURL := node.NATSURL() // without credentials: the embedded server has none
	fmt.Fprintf(c.stdout, "nats: %s\n", natsURL)
	if addr := node.HTTPAddr(); addr != "" {
		for _, t := range types {
			fmt.Fprintf(c.stdout, "http: http://%s/v1/state/%s/<key>\n", addr, t.Name)
		}
		for _, app := range names {
			for _, t := range apps.GlobalTables(app) {
				fmt.Fprintf(c.stdout, "http: http://%s/v1/tables/%s/<key>\n", addr, t.Name)
			}
		}
	}

	var wg sync.WaitGroup
	lctx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	if *load > 0 {
		// The client gets a connection of its own, as any producer would.
		if cfg.NATSURL != "" {
			natsURL = cfg.NATSURL
		}
		nc, err := nats.Connect(natsURL, append([]nats.Option{nats.Name("eddy load " + cfg.NodeID), nats.MaxReconnects(-1)}, cfg.NATSOptions...)...)
		if err != nil {
			return errors.Join(fmt.Errorf("load: connect to NATS: %w", err), stopNode())
		}
		defer nc.Close()
		client, err := eddy.NewClient(nc)
		if err != nil {
			return errors.Join(err, stopNode())
		}
		g := &loadGen{client: client, node: node, log: log.With("component", "load"), rate: *load, apps: names}
		wg.Go(func() {
			if err := g.run(lctx); err != nil {
				log.Error("load generator stopped", "err", err)
			}
		})
	}

	<-ctx.Done()
	log.Info("stopping node")
	stopLoad()
	wg.Wait()
	return stopNode()
}
