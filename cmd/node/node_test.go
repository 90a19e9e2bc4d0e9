package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"io"
	"net/http"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/internal/testkit"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func configFlagSet(cfg *eddy.Config) (*flag.FlagSet, *nodeFlags) {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	nf := addNodeFlags(fs, cfg)
	addTuningFlags(fs, cfg)
	addClusterFlags(fs, cfg)
	addLogFlags(fs, 0)
	return fs, nf
}

func TestFlagsAndEnvMirrors(t *testing.T) {
	cfg := eddy.DefaultConfig()
	fs, nf := configFlagSet(&cfg)
	vars := map[string]string{
		"EDDY_DATA_DIR":   "/var/lib/eddy",
		"EDDY_BATCH_SIZE": "10", // the flag below wins
		"EDDY_LINGER":     "5ms",
		"EDDY_CACHE_SIZE": "64MiB",
		"EDDY_NATS":       "nats://user:secret@nats-1:4222,nats://nats-2:4222",
		"EDDY_NATS_WAIT":  "2m",
	}
	args := []string{"--batch-size", "20", "--max-value-size", "128KiB", "--nats-creds", "/etc/eddy/node.creds"}
	if err := parseFlags(fs, args, env(vars)); err != nil {
		t.Fatal(err)
	}
	if cfg.DataDir != "/var/lib/eddy" || cfg.BatchSize != 20 || cfg.Linger != 5*time.Millisecond ||
		cfg.CacheSize != 64<<20 || cfg.MaxValueSize != 128<<10 || !strings.HasPrefix(cfg.NATSURL, "nats://user:") ||
		cfg.NATSWait != 2*time.Minute {
		t.Fatalf("config %+v", cfg)
	}
	if cfg.HTTPAddr != eddy.DefaultConfig().HTTPAddr {
		t.Fatalf("an unset flag lost its default: %q", cfg.HTTPAddr)
	}
	if opts, err := nf.natsOptions(); err != nil || len(opts) != 1 {
		t.Fatalf("nats options %d, %v", len(opts), err)
	}
	if u := fs.Lookup("data-dir").Usage; !strings.HasSuffix(u, "($EDDY_DATA_DIR)") {
		t.Fatalf("usage does not name the variable: %q", u)
	}
}

func TestBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		vars map[string]string
		want string
	}{
		{nil, map[string]string{"EDDY_LINGER": "soon"}, "$EDDY_LINGER"},
		{[]string{"--cache-size", "lots"}, nil, "cache-size"},
		{[]string{"--nats-creds", "x.creds"}, nil, "need --nats"},
		{[]string{"--nats", "nats://h:4222", "--nats-tls-cert", "c.pem"}, nil, "go together"},
		{[]string{"stray"}, nil, "unexpected arguments"},
	} {
		cfg := eddy.DefaultConfig()
		fs, nf := configFlagSet(&cfg)
		err := parseFlags(fs, tc.args, env(tc.vars))
		if err == nil {
			_, err = nf.natsOptions()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q %v: got %v, want an error about %q", tc.args, tc.vars, err, tc.want)
		}
	}
}

// Every eddy.Config field has a flag (and so an EDDY_* variable); a new field
// fails this test until it gets one.
func TestEveryConfigFieldHasAFlag(t *testing.T) {
	flagOf := map[string]string{
		"NodeID": "node-id", "DataDir": "data-dir", "NATSURL": "nats", "NATSOptions": "nats-creds", "NATSWait": "nats-wait",
		"EmbeddedNATSHost": "nats-host", "EmbeddedNATSPort": "nats-port", "HTTPAddr": "http",
		"BatchSize": "batch-size", "Linger": "linger", "MaxAttempts": "max-attempts",
		"MaxValueSize": "max-value-size", "MaxEventSize": "max-event-size", "MaxBatchRecords": "max-batch-records", "MaxBatchBytes": "max-batch-bytes", "CommitsInFlight": "commits-in-flight",
		"CacheSize": "cache-size", "StoreSync": "store-sync", "StreamReplicas": "stream-replicas", "DuplicateWindow": "duplicate-window",
		"SnapshotEvery": "snapshot-every", "SnapshotInterval": "snapshot-interval", "SnapshotsKept": "snapshots-kept",
		"Logger":     "log-format",
		"GossipAddr": "gossip", "RaftAddr": "raft", "Join": "join", "Bootstrap": "bootstrap", "BootstrapExpect": "expect",
		"Zone": "zone", "GossipKey": "gossip-key", "GossipProfile": "gossip-profile", "MaxLagForMove": "max-lag-for-move", "MaxVoters": "max-voters",
		"MaxConcurrentMoves": "max-concurrent-moves", "LeaveTimeout": "leave-timeout", "GiveBackAfter": "give-back-after",
		"Postgres": "pg-dsn",
	}
	noFlag := map[string]bool{"Registerer": true} // a Go value for embedders
	cfg := eddy.DefaultConfig()
	fs, _ := configFlagSet(&cfg)
	for f := range reflect.TypeFor[eddy.Config]().Fields() {
		if noFlag[f.Name] || !f.IsExported() {
			continue
		}
		name, ok := flagOf[f.Name]
		if !ok || fs.Lookup(name) == nil {
			t.Errorf("Config.%s has no flag", f.Name)
		}
	}
}

func TestSizes(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "4096": 4096, "64KiB": 64 << 10, "256MiB": 256 << 20, "2G": 2 << 30, "10 MiB": 10 << 20} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-1", "1.5GiB", "MiB", "9999999999GiB"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
	if got := formatSize(256 << 20); got != "256MiB" {
		t.Errorf("formatSize = %q", got)
	}
}

// TestRunAndStatus runs a node with both apps under load, reads its printed
// endpoints, asks `node status` for its partitions, and stops it as SIGINT would.
func TestRunAndStatus(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
	}()
	c := &cli{stdout: pw, stderr: testkit.LogWriter(t), lookupEnv: env(map[string]string{"EDDY_DATA_DIR": t.TempDir()})}
	done := make(chan int, 1)
	go func() {
		done <- c.main(ctx, []string{"run", "--app", "bank,wordcount", "--partitions", "2",
			"--nats-port", "-1", "--http", "127.0.0.1:0", "--load", "200", "--log-level", "warn"})
	}()

	var natsURL, stateURL string
	timeout := time.After(30 * time.Second)
	for natsURL == "" || stateURL == "" {
		select {
		case l := <-lines:
			if u, ok := strings.CutPrefix(l, "nats: "); ok {
				natsURL = u
			}
			if u, ok := strings.CutPrefix(l, "http: "); ok && strings.Contains(u, "/bank/") {
				stateURL = u
			}
		case code := <-done:
			t.Fatalf("node run exited with %d", code)
		case <-timeout:
			t.Fatal("node run printed no endpoints")
		}
	}
	if !strings.HasPrefix(natsURL, "nats://127.0.0.1:") {
		t.Fatalf("nats URL %q", natsURL)
	}

	// The load funds the accounts; wait until one shows its deposit.
	acct := strings.Replace(stateURL, "<key>", "acct-00", 1)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(acct)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && bytes.Contains(body, []byte(`"deposited":1000`)) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never showed the deposit (last error %v)", acct, err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	addr := strings.TrimPrefix(strings.SplitN(stateURL, "/v1/", 2)[0], "http://")
	var out bytes.Buffer
	sc := &cli{stdout: &out, stderr: testkit.LogWriter(t), lookupEnv: env(map[string]string{"EDDY_HTTP": addr})}
	if code := sc.main(ctx, []string{"status"}); code != 0 {
		t.Fatalf("node status exited with %d:\n%s", code, out.String())
	}
	for _, want := range []string{"TYPE", "CHANGELOG SEQ", "bank ", "lines ", "words "} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("status output lacks %q:\n%s", want, out.String())
		}
	}
	if n := strings.Count(out.String(), "\n"); n != 1+1+3*2 {
		t.Fatalf("want a node line, a header and 6 partitions:\n%s", out.String())
	}

	// node snapshot has the node snapshot each partition now.
	var snap bytes.Buffer
	snc := &cli{stdout: &snap, stderr: testkit.LogWriter(t), lookupEnv: env(nil)}
	if code := snc.main(ctx, []string{"snapshot", "--type", "bank", "--nats", natsURL}); code != 0 ||
		!strings.Contains(snap.String(), "bank/0 on node-1: changelog seq") || !strings.Contains(snap.String(), "bank/1 on node-1: changelog seq") {
		t.Fatalf("node snapshot exited with %d:\n%s", code, snap.String())
	}

	// node reset refuses while the node runs the type.
	var refused bytes.Buffer
	rc := &cli{stdout: &refused, stderr: &refused, lookupEnv: env(nil)}
	if code := rc.main(ctx, []string{"reset", "--type", "bank", "--nats", natsURL}); code != 1 || !strings.Contains(refused.String(), "runs on") {
		t.Fatalf("node reset while the bank runs exited with %d:\n%s", code, refused.String())
	}

	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("node run exited with %d", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("node run did not stop")
	}
	pw.Close()

	// Stopped, its embedded NATS server is the reset's: a dry run lists the
	// bank's changelogs and snapshot bucket, the reset deletes them, a
	// second finds none.
	for _, step := range []struct {
		args []string
		want string
	}{
		{[]string{"--dry-run"}, "would delete (dry run) 3 streams (changelogs, snapshots): EDDY_CL_bank_0 EDDY_CL_bank_1 OBJ_EDDY_SNAP_bank"},
		{nil, "deleted 3 streams (changelogs, snapshots): EDDY_CL_bank_0 EDDY_CL_bank_1 OBJ_EDDY_SNAP_bank"},
		{nil, "no changelog or snapshot stream to delete"},
	} {
		var out bytes.Buffer
		rc := &cli{stdout: &out, stderr: testkit.LogWriter(t), lookupEnv: c.lookupEnv}
		args := append([]string{"reset", "--type", "bank", "--nats-port", "-1"}, step.args...)
		if code := rc.main(context.Background(), args); code != 0 || !strings.Contains(out.String(), step.want) {
			t.Fatalf("node %v exited with %d:\n%s\nwant %q", args, code, out.String(), step.want)
		}
	}
}

func TestBenchTiny(t *testing.T) {
	var out bytes.Buffer
	c := &cli{stdout: &out, stderr: testkit.LogWriter(t), lookupEnv: env(nil)}
	args := []string{"bench", "--events", "2000", "--partitions", "4", "--keys", "100", "--restore-records", "2000"}
	if code := c.main(context.Background(), args); code != 0 {
		t.Fatalf("bench exited with %d:\n%s", code, out.String())
	}
	t.Log(out.String())
	for _, re := range []string{
		`(?m)^bench: throughput ratio=\d+\.\d\d eddy=\d+ raw=\d+$`,
		`(?m)^bench: limit ratio=\d+\.\d\d eddy=\d+ limit=\d+$`,
		`(?m)^bench: restore ratio=\d+\.\d\d eddy=\d+ raw=\d+$`,
		`(?m)^bench: snapshot upload ratio=\d+\.\d\d eddy=[\d.]+MiB/s raw=[\d.]+MiB/s$`,
		`(?m)^bench: snapshot restore speedup=\d+\.\d\d snapshot=\S+ changelog=\S+$`,
	} {
		if !regexp.MustCompile(re).MatchString(out.String()) {
			t.Errorf("output lacks a line matching %s:\n%s", re, out.String())
		}
	}
}
