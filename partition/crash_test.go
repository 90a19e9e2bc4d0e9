package partition

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/eddyrt/eddy/actor"
	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/internal/natstest"
	"github.com/eddyrt/eddy/snapshot"
	"github.com/eddyrt/eddy/statestore"
	"github.com/eddyrt/eddy/statestore/postgres"
)

// The crash child is this test binary run again with these variables set.
const (
	envChild    = "EDDY_CRASH_CHILD"  // "1" in the child
	envNATS     = "EDDY_CRASH_NATS"   // the parent's NATS URL
	envType     = "EDDY_CRASH_TYPE"   // the actor type
	envStoreDir = "EDDY_CRASH_STORE"  // the partition's store dir
	envHook     = "EDDY_CRASH_HOOK"   // AfterChangelog, AfterLocal, MidForward, or empty: no crash
	envAt       = "EDDY_CRASH_AT"     // crash on this call of the hook
	envNoCL     = "EDDY_CRASH_NOCL"   // "1": the stores have no changelog (Config.NoChangelog)
	envSnap     = "EDDY_CRASH_SNAP"   // "true": the actor takes snapshots (Config.SnapshotEvery)
	envInFlight = "EDDY_CRASH_FLIGHT" // Config.CommitsInFlight
	envTable    = "EDDY_CRASH_TABLE"  // a co-partitioned table: the handler joins with it (joinHandler)
	envPG       = "EDDY_CRASH_PG"     // a PostgreSQL DSN: the state is there (Config.External)
)

// pipelinedLine starts the line a crash child prints with how many commits
// it sent behind another (Config.CommitsInFlight 2).
const pipelinedLine = "commits pipelined: "

// crashExit is the exit code of a child that crashed at its hook.
const crashExit = 3

// crashOutputs is how many outputs the crash handler publishes per event: a
// commit needs two outbox entries for MidForward to run.
const crashOutputs = 2

// TestCrashBetweenCommitSteps crashes a child process running a partition actor
// at each step of a commit (os.Exit in a hook: no cleanup runs, as after a
// SIGKILL), restarts it on the same local store or on none (then from a
// snapshot, when the child took snapshots and one finished before the crash),
// and compares state and outputs with a sequential run of the same input.
func TestCrashBetweenCommitSteps(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	// A server that takes messages of at most 2 KiB: a commit's records no
	// longer fit in one message, and each commit is an atomic batch of
	// parts and its commit message.
	small := natstest.StartWith(t, func(o *server.Options) { o.MaxPayload = 2 << 10 })
	_, smallJS := small.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	variants := []struct {
		prefix, typPrefix string
		srv               *natstest.Server
		js                jetstream.JetStream
		noChangelog       bool
		hooks, modes      []string
		inFlight          int
	}{
		{"", "crash_", srv, js, false,
			[]string{"AfterChangelog", "AfterLocal", "MidForward"}, []string{"", "StoreLost", "StoreLostSnapshot"}, 1},
		// Stores without a changelog are rebuilt from the input stream where
		// the local store is behind (a crash after the changelog commit) or
		// lost; they take no snapshots.
		{"NoChangelog/", "crash_nocl_", srv, js, true,
			[]string{"AfterChangelog", "AfterLocal"}, []string{"", "StoreLost"}, 1},
		// Snapshots upload chunks larger than the small server takes.
		{"Parts/", "crash_parts_", small, smallJS, false,
			[]string{"AfterChangelog", "AfterLocal", "MidForward"}, []string{"", "StoreLost"}, 1},
		// Commits sent while the one before is in flight: a crash leaves
		// one more commit in the changelog than in the local store.
		{"Pipelined/", "crash_pipe_", srv, js, false,
			[]string{"AfterChangelog", "AfterLocal", "MidForward"}, []string{"", "StoreLostSnapshot"}, 2},
	}
	for _, v := range variants {
		for _, hook := range v.hooks {
			for _, mode := range v.modes {
				name, typ := v.prefix+hook, v.typPrefix+strings.ToLower(hook)
				if mode != "" {
					name, typ = name+"/"+mode, typ+"_"+strings.ToLower(mode)
				}
				storeLost, snapshots := mode != "", mode == "StoreLostSnapshot"
				t.Run(name, func(t *testing.T) {
					crashScenario(t, ctx, v.srv.URL(), v.js, typ, hook, storeLost, v.noChangelog, snapshots, v.inFlight)
					if v.srv == small {
						checkParts(t, ctx, v.js, changelog.NewSubjects(typ, 0))
					}
				})
			}
		}
	}
}

// publishModel publishes events to partition 0 of in with random keys
// k0..k<keys-1>, and adds to counts and outputs what a sequential run makes
// of them: each key's count, and for each event (by offset) the output
// "<key>=<count so far>". It returns the last event's offset.
func publishModel(t testing.TB, ctx context.Context, js jetstream.JetStream, in Input, rng *rand.Rand, events, keys int, counts map[string]uint64, outputs map[uint64]string) uint64 {
	t.Helper()
	var last uint64
	for range events {
		key := "k" + strconv.Itoa(rng.IntN(keys))
		ack, err := js.PublishMsg(ctx, in.Msg(key, nil))
		if err != nil {
			t.Fatal(err)
		}
		counts[key]++
		outputs[ack.Sequence] = fmt.Sprintf("%s=%d", key, counts[key])
		last = ack.Sequence
	}
	return last
}

func crashScenario(t *testing.T, ctx context.Context, url string, js jetstream.JetStream, typ, hook string, storeLost, noChangelog, snapshots bool, inFlight int) {
	const events, keys = 300, 10
	opt := StreamOptions{Replicas: 1, Duplicates: 2 * time.Minute}
	if err := EnsureInputStream(ctx, js, Input{Type: typ, Partitions: 1}, opt); err != nil {
		t.Fatal(err)
	}
	if err := EnsureStream(ctx, js, DLQStream(typ), []string{DLQSubject(typ)}, opt); err != nil {
		t.Fatal(err)
	}
	if noChangelog {
		// A short duplicate window: a rebuild that forwarded the outputs of
		// replayed events again would show them twice.
		short := StreamOptions{Replicas: 1, Duplicates: 100 * time.Millisecond}
		if err := EnsureStream(ctx, js, typ+"_out", []string{"out." + typ}, short); err != nil {
			t.Fatal(err)
		}
	} else {
		ensureOutput(t, ctx, js, typ+"_out", "out."+typ)
	}

	// The input, and what a sequential run makes of it: the count of each key,
	// and for each event the output "<key>=<count so far>".
	rng := rand.New(rand.NewPCG(1, uint64(len(typ))))
	counts, outputs := map[string]uint64{}, map[uint64]string{}
	last := publishModel(t, ctx, js, Input{Type: typ, Partitions: 1}, rng, events, keys, counts, outputs)

	child := crashChild{t: t, url: url, typ: typ, storeDir: filepath.Join(t.TempDir(), "store"), noChangelog: noChangelog, snapshots: snapshots, inFlight: inFlight}
	if code, _ := child.run(ctx, hook, 4); code != crashExit {
		t.Fatalf("child exited with %d, want %d: it did not crash at %s", code, crashExit, hook)
	}
	cl := changelog.NewSubjects(typ, 0)
	if m, _, err := lastMeta(ctx, js, cl); err != nil || m.Offset >= last || m.Epoch != 1 {
		t.Fatalf("the child committed offset %d of %d in epoch %d (%v); want a crash mid-stream, in its first incarnation",
			m.Offset, last, m.Epoch, err)
	}
	if noChangelog {
		// Past the outputs' duplicate window: only suppression keeps a
		// rebuild from forwarding them again. (Entries the crash left
		// unforwarded are forwarded once, later; none needs the window.)
		time.Sleep(200 * time.Millisecond)
	}
	if storeLost {
		if err := os.RemoveAll(child.storeDir); err != nil {
			t.Fatal(err)
		}
	}
	// A snapshot is restored if one finished before the crash (uploads run
	// in the background: the crash may have cut the latest short).
	fromSnapshot := false
	if snapshots {
		if b, err := snapshot.Lookup(ctx, js, typ, snapshot.DefaultConfig()); err == nil {
			ms, err := b.Manifests(ctx, 0)
			if err != nil {
				t.Fatal(err)
			}
			fromSnapshot = len(ms) > 0
		}
		if !fromSnapshot {
			t.Log("no snapshot finished before the crash")
		}
	}
	code, logs := child.run(ctx, "", 0)
	if code != 0 {
		t.Fatalf("restarted child exited with %d", code)
	}
	if inFlight > 1 {
		_, after, _ := strings.Cut(logs, pipelinedLine)
		if n, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(after, "\n", 2)[0])); n == 0 {
			t.Errorf("the restarted child sent no commit behind another (%q)", pipelinedLine+after)
		}
	}
	// The restart took the restore path this case is about.
	if full := strings.Contains(logs, "restoring from the whole changelog"); full != (storeLost && !fromSnapshot) {
		t.Errorf("restart restored from the whole changelog: %v, want %v", full, storeLost && !fromSnapshot)
	}
	if restored := strings.Contains(logs, "restored from snapshot"); restored != fromSnapshot {
		t.Errorf("restart restored from a snapshot: %v, want %v", restored, fromSnapshot)
	}
	// Without a changelog, a store that missed a commit or was lost is
	// rebuilt from the input; one that has every commit is not.
	wantRebuild := noChangelog && (storeLost || hook == "AfterChangelog")
	if rebuilt := strings.Contains(logs, "rebuilt stores from the input stream"); rebuilt != wantRebuild {
		t.Errorf("restart rebuilt from the input stream: %v, want %v", rebuilt, wantRebuild)
	}

	// State: the changelog (or, without one, the local store) holds each
	// key's count, as a sequential run has it.
	if m, _, err := lastMeta(ctx, js, cl); err != nil || m.Offset != last {
		t.Fatalf("committed offset %d, want %d (%v)", m.Offset, last, err)
	}
	got := map[string]uint64{}
	_, err := changelog.Replay(ctx, js, cl, changelog.ReplayConfig{From: 1}, func(_ uint64, r changelog.Record) error {
		if r.Kind == changelog.KindSet || r.Kind == changelog.KindDelete {
			if noChangelog {
				return fmt.Errorf("a store without a changelog wrote %v of %q to it", r.Kind, r.Key)
			}
			if r.Store == DefaultStore {
				got[string(r.Key)] = binary.BigEndian.Uint64(r.Value)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := js.Stream(ctx, cl.Stream()); err != nil {
		t.Fatal(err)
	} else if first := st.CachedInfo().State.FirstSeq; first > 1 && !noChangelog {
		// Snapshots trimmed the changelog: the state is the newest
		// snapshot plus the records after it, which the restarted child
		// restored into its store and committed from there.
		t.Logf("the changelog was trimmed below %d: checking the restored store", first)
		got = localCounts(t, child.storeDir, keys)
	}
	if noChangelog {
		got = localCounts(t, child.storeDir, keys)
	}
	for key, want := range counts {
		if got[key] != want {
			t.Errorf("%s = %d, want %d", key, got[key], want)
		}
	}
	if len(got) != len(counts) {
		t.Errorf("changelog holds %d keys, want %d", len(got), len(counts))
	}

	// Outputs: every (event, index) exactly once, with the sequential value.
	checkOutputs(t, ctx, js, typ+"_out", typ, outputs, crashOutputs)
	if dl := streamMsgs(t, ctx, js, DLQStream(typ)); len(dl) != 0 {
		t.Errorf("%d dead letters, want none", len(dl))
	}
}

// checkParts fails t unless commits of the changelog s took parts.
func checkParts(t *testing.T, ctx context.Context, js jetstream.JetStream, s changelog.Subjects) {
	t.Helper()
	st, err := js.Stream(ctx, s.Stream())
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(s.Parts()))
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Subjects[s.Parts()]; n == 0 {
		t.Errorf("no commit of %s took parts", s.Stream())
	} else {
		t.Logf("%d parts in %d messages", n, info.State.Msgs)
	}
}

// localCounts reads the counts of keys k0..k<keys-1> from a stopped
// partition's local store.
func localCounts(t *testing.T, dir string, keys int) map[string]uint64 {
	t.Helper()
	st, err := statestore.OpenPebble(statestore.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	got := map[string]uint64{}
	for i := range keys {
		k := "k" + strconv.Itoa(i)
		v, err := st.Get([]byte(storeKey(DefaultStore, []byte(k))))
		if errors.Is(err, statestore.ErrNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		got[k] = binary.BigEndian.Uint64(v)
	}
	return got
}

// crashChild runs the partition actor of TestCrashChild in a child process.
type crashChild struct {
	t           *testing.T
	url         string
	typ         string
	storeDir    string
	noChangelog bool
	snapshots   bool
	inFlight    int
	table       string
	pg          string
}

// run runs the child until it exits and returns its exit code and output. With
// a hook it crashes on call number at of that hook; without, it stops once it
// has committed every input event. Its logs go to t.Log if the test fails (or
// always, with EDDY_CRASH_LOGS=1).
func (c crashChild) run(ctx context.Context, hook string, at int) (int, string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1", "-test.v", "-test.timeout=60s")
	cmd.Env = append(os.Environ(),
		envChild+"=1", envNATS+"="+c.url, envType+"="+c.typ, envStoreDir+"="+c.storeDir,
		envHook+"="+hook, envAt+"="+strconv.Itoa(at), envNoCL+"="+strconv.FormatBool(c.noChangelog), envSnap+"="+strconv.FormatBool(c.snapshots),
		envInFlight+"="+strconv.Itoa(c.inFlight), envTable+"="+c.table, envPG+"="+c.pg,
		// Under -race a clean exit otherwise sleeps 1 s for late race reports.
		"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	start := time.Now()
	err := cmd.Run()
	what := "child (no crash)"
	if hook != "" {
		what = fmt.Sprintf("child (crash at %s #%d)", hook, at)
	}
	c.t.Cleanup(func() {
		if c.t.Failed() || os.Getenv("EDDY_CRASH_LOGS") != "" {
			c.t.Logf("%s output:\n%s", what, logs.String())
		}
	})
	c.t.Logf("%s ran %v", what, time.Since(start).Round(time.Millisecond))
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, logs.String()
	case errors.As(err, &exit):
		return exit.ExitCode(), logs.String()
	default:
		c.t.Fatalf("%s: %v", what, err)
		return -1, ""
	}
}

// TestCrashChild is the child process of TestCrashBetweenCommitSteps; it does
// nothing in a normal test run.
func TestCrashChild(t *testing.T) {
	if os.Getenv(envChild) != "1" {
		t.Skip("the child process of TestCrashBetweenCommitSteps")
	}
	typ, hook := os.Getenv(envType), os.Getenv(envHook)
	at, _ := strconv.Atoi(os.Getenv(envAt))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	nc, err := nats.Connect(os.Getenv(envNATS), nats.MaxReconnects(-1), nats.ReconnectBufSize(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// Straight to stderr: a crash must not lose the last lines.
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	sys := actor.NewSystem(log)
	defer func() { _ = sys.Stop(context.Background()) }()

	cfg := DefaultConfig()
	cfg.Type, cfg.Partition, cfg.Partitions = typ, 0, 1
	cfg.Handler = countAndEmit("out."+typ, crashOutputs)
	cfg.Conn, cfg.JS = nc, js
	cfg.StoreDir = os.Getenv(envStoreDir)
	cfg.DLQSubject = DLQSubject(typ)
	cfg.NoChangelog = os.Getenv(envNoCL) == "true"
	if os.Getenv(envSnap) == "true" {
		cfg.SnapshotEvery = 20 // about every commit of 25 events
	}
	cfg.Logger = log
	cfg.Metrics = NewMetrics(prometheus.NewRegistry())
	if n, err := strconv.Atoi(os.Getenv(envInFlight)); err == nil {
		cfg.CommitsInFlight = n
	}
	if tbl := os.Getenv(envTable); tbl != "" {
		cfg.Tables = []Input{{Type: tbl, Partitions: 1}}
		cfg.Handler = joinHandler(tbl, typ+"_out")
	}
	if dsn := os.Getenv(envPG); dsn != "" {
		pcfg := postgres.DefaultConfig(dsn)
		db, err := postgres.Open(ctx, pcfg)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		cfg.External = db
	}
	cfg.BatchSize = 25 // a dozen commits
	// The local commit a hook crashes after must be on disk, as it would be
	// after any commit of a large store.
	cfg.StoreSync = true
	cfg.MarkDelay = 50 * time.Millisecond
	calls := 0
	crash := func() {
		calls++
		if calls == at {
			log.Info("crashing", "hook", hook, "call", calls)
			os.Exit(crashExit)
		}
	}
	switch hook {
	case "AfterChangelog":
		cfg.Hooks.AfterChangelog = crash
	case "BeforeExternalCommit":
		cfg.Hooks.BeforeExternalCommit = crash
	case "AfterLocal":
		cfg.Hooks.AfterLocal = crash
	case "MidForward":
		cfg.Hooks.MidForward = crash
	case "":
	default:
		t.Fatalf("unknown hook %q", hook)
	}
	sup := actor.DefaultSupervisorConfig()
	sup.MinBackoff, sup.MaxBackoff = 10*time.Millisecond, 200*time.Millisecond
	a, err := Start(sys, cfg, sup)
	if err != nil {
		t.Fatal(err)
	}

	st, err := js.Stream(ctx, typ)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for {
		s := a.Status()
		if s.Offset >= info.State.LastSeq {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("offset %d, want %d: %v", s.Offset, info.State.LastSeq, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	if err := a.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if n := a.Restarts(); n != 0 {
		t.Errorf("actor restarted %d times", n)
	}
	fmt.Printf("%s%.0f\n", pipelinedLine, testutil.ToFloat64(cfg.Metrics.commitsPipelined.WithLabelValues(typ, "0")))
}
