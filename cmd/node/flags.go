package main

import (
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/statestore/postgres"
)

// envName is the environment variable that mirrors a flag: --data-dir is EDDY_DATA_DIR.
func envName(flagName string) string {
	return "EDDY_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseFlags sets fs's flags from their EDDY_* variables, then from args, so a
// flag on the command line wins over its variable, which wins over the default.
func parseFlags(fs *flag.FlagSet, args []string, lookupEnv func(string) (string, bool)) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		name := envName(f.Name)
		if !strings.HasSuffix(f.Usage, "$"+name+")") {
			f.Usage += " ($" + name + ")"
		}
		v, ok := lookupEnv(name)
		if !ok || err != nil {
			return
		}
		if e := fs.Set(f.Name, v); e != nil {
			err = fmt.Errorf("$%s=%q: %w", name, v, e)
		}
	})
	if err != nil {
		fmt.Fprintln(fs.Output(), err)
		return err
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		err := fmt.Errorf("%s: unexpected arguments %q", fs.Name(), fs.Args())
		fmt.Fprintln(fs.Output(), err)
		return err
	}
	return nil
}

// nodeFlags binds the flags of the eddy.Config fields that place a node: its
// id, data, NATS server and HTTP endpoint.
type nodeFlags struct {
	cfg *eddy.Config
	// Sources of Config.NATSOptions.
	natsCreds, tlsCA, tlsCert, tlsKey string
}

func addNodeFlags(fs *flag.FlagSet, cfg *eddy.Config) *nodeFlags {
	f := &nodeFlags{cfg: cfg}
	fs.StringVar(&cfg.NodeID, "node-id", cfg.NodeID, "`name` of the node in logs and metrics")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "`dir`ectory of the state stores (and of the embedded NATS server's JetStream data, under nats/)")
	fs.StringVar(&cfg.NATSURL, "nats", cfg.NATSURL, "NATS server `URL`s, comma-separated; empty runs an embedded server (development)")
	fs.DurationVar(&cfg.NATSWait, "nats-wait", cfg.NATSWait, "how long start-up waits for NATS, JetStream and the streams before giving up; 0 waits as long as it takes")
	fs.StringVar(&f.natsCreds, "nats-creds", "", "NATS user credentials `file` (with --nats)")
	fs.StringVar(&f.tlsCA, "nats-tls-ca", "", "CA certificate `file` that signs the NATS server's certificate (with --nats)")
	fs.StringVar(&f.tlsCert, "nats-tls-cert", "", "client certificate `file` for NATS TLS (with --nats and --nats-tls-key)")
	fs.StringVar(&f.tlsKey, "nats-tls-key", "", "client key `file` for NATS TLS (with --nats and --nats-tls-cert)")
	fs.StringVar(&cfg.EmbeddedNATSHost, "nats-host", cfg.EmbeddedNATSHost, "`host` the embedded NATS server listens on")
	fs.IntVar(&cfg.EmbeddedNATSPort, "nats-port", cfg.EmbeddedNATSPort, "`port` the embedded NATS server listens on (-1: any free port)")
	fs.Var(dsnFlag{&cfg.Postgres.DSN}, "pg-dsn", "PostgreSQL connection `string` (postgres://user:password@host:port/db) of the actor types whose state is in PostgreSQL (--state-store postgres); it is never printed or logged, only redacted")
	fs.StringVar(&cfg.HTTPAddr, "http", cfg.HTTPAddr, "`address` of the HTTP API (/v1/state, /v1/status, /metrics); empty disables it")
	return f
}

// natsOptions turns the credential and TLS flags into Config.NATSOptions.
func (f *nodeFlags) natsOptions() ([]nats.Option, error) {
	var opts []nats.Option
	if f.natsCreds != "" {
		opts = append(opts, nats.UserCredentials(f.natsCreds))
	}
	if f.tlsCA != "" {
		opts = append(opts, nats.RootCAs(f.tlsCA))
	}
	switch {
	case f.tlsCert != "" && f.tlsKey != "":
		opts = append(opts, nats.ClientCert(f.tlsCert, f.tlsKey))
	case f.tlsCert != "" || f.tlsKey != "":
		return nil, errors.New("--nats-tls-cert and --nats-tls-key go together")
	}
	if len(opts) > 0 && f.cfg.NATSURL == "" {
		return nil, errors.New("--nats-creds and --nats-tls-* need --nats: the embedded server has no credentials or TLS")
	}
	return opts, nil
}

// addTuningFlags binds the flags of the eddy.Config fields that tune
// processing, stores and streams.
func addTuningFlags(fs *flag.FlagSet, cfg *eddy.Config) {
	fs.IntVar(&cfg.BatchSize, "batch-size", cfg.BatchSize, "most `events` a partition processes per commit")
	fs.DurationVar(&cfg.Linger, "linger", cfg.Linger, "how long a partition waits to fill a batch")
	fs.IntVar(&cfg.MaxAttempts, "max-attempts", cfg.MaxAttempts, "how often a failing handler runs before its event goes to the dead-letter stream")
	fs.Var(sizeFlag[int]{&cfg.MaxValueSize}, "max-value-size", "largest state value, emitted message or reply, in `bytes` (or with KiB, MiB)")
	fs.Var(sizeFlag[int]{&cfg.MaxEventSize}, "max-event-size", "largest event processed, in `bytes`; larger ones go to the dead-letter stream")
	fs.IntVar(&cfg.MaxBatchRecords, "max-batch-records", cfg.MaxBatchRecords, "most changelog `records` a partition commits at once; a batch is cut before it passes them")
	fs.Var(sizeFlag[int]{&cfg.MaxBatchBytes}, "max-batch-bytes", "most `bytes` of changelog records a partition commits at once (or with KiB, MiB); at least max-value-size and max-event-size")
	fs.IntVar(&cfg.CommitsInFlight, "commits-in-flight", cfg.CommitsInFlight, "changelog `commits` a partition has in flight: 2 sends a batch's commit while the one before is acknowledged, 1 waits for each")
	fs.BoolVar(&cfg.StoreSync, "store-sync", cfg.StoreSync, "fsync the local store once per commit, so a restart after a crash replays a shorter changelog tail (stores without a changelog always fsync)")
	fs.Var(sizeFlag[int64]{&cfg.CacheSize}, "cache-size", "block cache shared by the node's state stores, in `bytes` (or with KiB, MiB, GiB)")
	fs.IntVar(&cfg.StreamReplicas, "stream-replicas", cfg.StreamReplicas, "JetStream replicas of the streams eddy creates (3 on a NATS cluster)")
	fs.DurationVar(&cfg.DuplicateWindow, "duplicate-window", cfg.DuplicateWindow, "deduplication window of the streams eddy creates; must cover the longest failover")
	fs.Uint64Var(&cfg.SnapshotEvery, "snapshot-every", cfg.SnapshotEvery, "snapshot each active partition's store to the JetStream Object Store every this many changelog `records` (0: not by count)")
	fs.DurationVar(&cfg.SnapshotInterval, "snapshot-interval", cfg.SnapshotInterval, "snapshot each active partition's store this long after the last snapshot, if it changed (0: not by time)")
	fs.IntVar(&cfg.SnapshotsKept, "snapshots-kept", cfg.SnapshotsKept, "snapshots kept per partition, the newest; a restore falls back to an older one if the newest is damaged")
}

// addClusterFlags binds the flags of the eddy.Config fields that make a node
// a cluster member.
func addClusterFlags(fs *flag.FlagSet, cfg *eddy.Config) {
	fs.StringVar(&cfg.GossipAddr, "gossip", cfg.GossipAddr, "`host:port` of the node's gossip (UDP and TCP); set it to run as a cluster member")
	fs.StringVar(&cfg.RaftAddr, "raft", cfg.RaftAddr, "`host:port` of the node's Raft transport (cluster member)")
	fs.Var(listFlag{&cfg.Join}, "join", "gossip `seeds` to join, host:port comma-separated; any live member will do")
	fs.BoolVar(&cfg.Bootstrap, "bootstrap", cfg.Bootstrap, "form a new one-node cluster on first start")
	fs.IntVar(&cfg.BootstrapExpect, "expect", cfg.BootstrapExpect, "form a new cluster once this many `nodes` have gossiped (the same on each initial node)")
	fs.StringVar(&cfg.Zone, "zone", cfg.Zone, "failure `zone` of the node; hot replicas are spread across zones")
	fs.Var(keyFlag{&cfg.GossipKey}, "gossip-key", "base64 `key` (16, 24 or 32 bytes) that encrypts gossip; the same on every node")
	fs.StringVar(&cfg.GossipProfile, "gossip-profile", cfg.GossipProfile, "failure detector `timing`: lan-fast (~1 s to see a crash) or lan (memberlist's default, ~7 s)")
	fs.IntVar(&cfg.MaxVoters, "max-voters", cfg.MaxVoters, "Raft `voters` (odd, 1 to 7): 3 survives one failed node, 5 two; the other nodes follow as non-voters")
	fs.Uint64Var(&cfg.MaxLagForMove, "max-lag-for-move", cfg.MaxLagForMove, "replica lag in changelog `records` under which a warm-up move hands a partition over")
	fs.IntVar(&cfg.MaxConcurrentMoves, "max-concurrent-moves", cfg.MaxConcurrentMoves, "most warm-up `moves` in progress in the cluster")
	fs.DurationVar(&cfg.LeaveTimeout, "leave-timeout", cfg.LeaveTimeout, "how long a graceful leave (SIGTERM) waits for the node's partitions to move")
	fs.DurationVar(&cfg.GiveBackAfter, "give-back-after", cfg.GiveBackAfter, "how long a partition may keep failing here, with NATS connected, before it is given back to the assignor")
}

// listFlag is a comma-separated list.
type listFlag struct{ p *[]string }

func (l listFlag) String() string {
	if l.p == nil {
		return ""
	}
	return strings.Join(*l.p, ",")
}

func (l listFlag) Set(v string) error {
	*l.p = nil
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l.p = append(*l.p, s)
		}
	}
	return nil
}

// repeatedFlag collects the values of a flag given any number of times, in
// order: --node-flag=--batch-size=500 --node-flag=--linger=5ms.
type repeatedFlag struct{ p *[]string }

func (r repeatedFlag) String() string {
	if r.p == nil {
		return ""
	}
	return strings.Join(*r.p, " ")
}

func (r repeatedFlag) Set(v string) error {
	*r.p = append(*r.p, v)
	return nil
}

// keyFlag is a key given in standard base64.
type keyFlag struct{ p *[]byte }

func (k keyFlag) String() string { return "" } // never print a secret

func (k keyFlag) Set(v string) error {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v))
	if err != nil {
		return fmt.Errorf("gossip key: want base64: %w", err)
	}
	if n := len(b); n != 16 && n != 24 && n != 32 {
		return fmt.Errorf("gossip key: %d bytes, want 16, 24 or 32", n)
	}
	*k.p = b
	return nil
}

// dsnFlag is a PostgreSQL connection string: it holds a password.
type dsnFlag struct{ p *string }

func (d dsnFlag) String() string {
	if d.p == nil || *d.p == "" {
		return ""
	}
	return postgres.Redact(*d.p) // never print a secret
}

func (d dsnFlag) Set(v string) error {
	*d.p = strings.TrimSpace(v)
	return nil
}

// logFlags choose the format and level of the logs on stderr.
type logFlags struct {
	format string
	level  slog.Level
}

func addLogFlags(fs *flag.FlagSet, level slog.Level) *logFlags {
	l := &logFlags{format: "text", level: level}
	fs.StringVar(&l.format, "log-format", l.format, "log `format` on stderr: text or json")
	fs.TextVar(&l.level, "log-level", l.level, "least `level` logged: debug, info, warn or error")
	return l
}

func (l *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: l.level}
	switch l.format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", l.format)
}

// sizeFlag is a byte count flag that takes plain bytes or a binary unit
// (KiB, MiB, GiB; K, M, G mean the same).
type sizeFlag[T ~int | ~int64] struct{ p *T }

func (s sizeFlag[T]) String() string {
	if s.p == nil {
		return "0"
	}
	return formatSize(int64(*s.p))
}

func (s sizeFlag[T]) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	if int64(T(n)) != n {
		return fmt.Errorf("size %s out of range", v)
	}
	*s.p = T(n)
	return nil
}

var sizeUnits = []struct {
	suffix string
	mult   int64
}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}}

func parseSize(v string) (int64, error) {
	s := strings.TrimSpace(v)
	mult := int64(1)
	for _, u := range sizeUnits {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: want bytes, or a number with KiB, MiB or GiB", v)
	}
	return n * mult, nil
}

func formatSize(n int64) string {
	for _, u := range sizeUnits[:3] {
		if n >= u.mult && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}
