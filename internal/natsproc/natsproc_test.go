package natsproc

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TestClusterFaults runs a 3-server cluster through the faults eddy's tests
// will use: an R3 stream keeps every acknowledged message, exactly once and
// in order, across a leader step-down, the SIGKILL of its leader, that
// server's restart and catch-up, and the pause of a follower.
func TestClusterFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("starts nats-server processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	c := newCluster(t, Config{Servers: 3, Dir: t.TempDir(), SyncAlways: true})
	if err := c.StartAll(); err != nil {
		t.Fatal(err)
	}
	waitReady(t, ctx, c, "cluster started")
	nc, js := connect(t, c)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "EV", Subjects: []string{"ev.>"}, Replicas: 3, Storage: jetstream.FileStorage,
	}); err != nil {
		t.Fatalf("create stream: %v", err)
	}
	p := &publisher{js: js, subject: "ev.x"}
	p.publish(t, ctx, 20)

	// 1. Step-down: another server leads, and publishing goes on.
	leader, err := StreamLeader(ctx, js, "EV")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	next, err := StepDownStream(ctx, nc, "EV")
	if err != nil {
		t.Fatal(err)
	}
	if next == leader {
		t.Fatalf("step-down kept %s as leader", leader)
	}
	t.Logf("step-down: %s -> %s in %v", leader, next, time.Since(start).Round(time.Millisecond))
	slow, errs := p.publish(t, ctx, 20)
	t.Logf("after step-down: slowest publish %v, retried errors %q", slow.Round(time.Millisecond), errs)

	// An R1 stream has no other server to lead it.
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "ONE", Subjects: []string{"one"}}); err != nil {
		t.Fatalf("create stream: %v", err)
	}
	one, err := StreamLeader(ctx, js, "ONE")
	if err != nil {
		t.Fatal(err)
	}
	_, err = StepDownStream(ctx, nc, "ONE")
	errorsIs(t, err, ErrNotReplicated)
	other := c.Name((mustIndex(t, c, one) + 1) % 3)
	errorsIs(t, MoveStreamLeader(ctx, nc, "ONE", other), ErrNotReplica)

	// 2. SIGKILL the server leading both the stream and the meta group: the
	// other two elect new leaders and take publishes.
	meta, err := c.WaitMetaLeader(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := MoveStreamLeader(ctx, nc, "EV", meta); err != nil {
		t.Fatal(err)
	}
	killed := mustIndex(t, c, meta)
	if err := c.Kill(killed); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if c.Running(killed) {
		t.Fatalf("%s runs after Kill", meta)
	}
	t.Logf("killed %s, leader of the stream and the meta group", meta)
	slow, errs = p.publish(t, ctx, 20)
	t.Logf("with %s down: slowest publish %v, retried errors %q", meta, slow.Round(time.Millisecond), errs)
	if slow > 15*time.Second {
		t.Errorf("publishing took %v to resume after the leader was killed", slow)
	}
	survivor, err := WaitStreamLeader(ctx, js, "EV", meta)
	if err != nil {
		t.Fatal(err)
	}
	newMeta, err := c.WaitMetaLeader(ctx, meta)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stream leader %s, meta leader %s, %v after the kill", survivor, newMeta, time.Since(start).Round(time.Millisecond))
	waitReady(t, ctx, c, "two of three running")

	// 3. Restart it: it catches up, and leads with the whole stream.
	if err := c.Start(killed); err != nil {
		t.Fatal(err)
	}
	waitReady(t, ctx, c, "killed server restarted")
	start = time.Now()
	if err := MoveStreamLeader(ctx, nc, "EV", meta); err != nil {
		t.Fatal(err)
	}
	t.Logf("stream leadership moved %s -> %s (restarted) in %v", survivor, meta, time.Since(start).Round(time.Millisecond))
	checkStream(t, ctx, js, "EV", p.sent)

	// 4. Pause a follower, the client's server if it is one: the other two
	// still take publishes, and the client moves to one of them.
	follower := (killed + 1) % 3
	if on, err := c.Index(nc.ConnectedServerName()); err == nil && on != killed {
		follower = on
	}
	t.Logf("client on %s; pausing %s", nc.ConnectedServerName(), c.Name(follower))
	if err := c.Pause(follower); err != nil {
		t.Fatal(err)
	}
	if !c.Paused(follower) || !c.Running(follower) {
		t.Fatalf("%s after Pause: paused %v, running %v", c.Name(follower), c.Paused(follower), c.Running(follower))
	}
	slow, errs = p.publish(t, ctx, 10)
	t.Logf("with %s paused: slowest publish %v, retried errors %q", c.Name(follower), slow.Round(time.Millisecond), errs)
	t.Logf("client on %s", nc.ConnectedServerName())
	if err := c.Resume(follower); err != nil {
		t.Fatal(err)
	}
	waitReady(t, ctx, c, "paused server resumed")
	checkStream(t, ctx, js, "EV", p.sent)
}

// TestSingleServer runs one server that starts after its client, is killed
// and restarted, and stopped and restarted gracefully, keeping its stream.
func TestSingleServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts nats-server processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	c := newCluster(t, Config{Servers: 1, Dir: t.TempDir()})
	// The client comes first and connects when the server starts.
	nc, js := connect(t, c)
	if nc.IsConnected() {
		t.Fatal("connected before the server started")
	}
	if err := c.StartAll(); err != nil {
		t.Fatal(err)
	}
	waitReady(t, ctx, c, "server started")
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s"}}); err != nil {
		t.Fatalf("create stream: %v", err)
	}
	p := &publisher{js: js, subject: "s"}
	p.publish(t, ctx, 10)
	if leader, err := StreamLeader(ctx, js, "S"); err != nil || leader != "n1" {
		t.Fatalf("leader of S: %q, %v; want n1", leader, err)
	}
	_, err := StepDownStream(ctx, nc, "S")
	errorsIs(t, err, ErrNotReplicated)
	errorsIs(t, c.Start(0), ErrRunning)

	pid := c.Pid(0)
	if err := c.Kill(0); err != nil {
		t.Fatal(err)
	}
	if c.Running(0) || c.Pid(0) != 0 {
		t.Fatal("running after Kill")
	}
	if err := c.Kill(0); err != nil {
		t.Fatalf("second Kill: %v", err)
	}
	if err := c.Start(0); err != nil {
		t.Fatal(err)
	}
	if c.Pid(0) == pid {
		t.Fatal("same process after Kill and Start")
	}
	waitReady(t, ctx, c, "restarted after SIGKILL")
	checkStream(t, ctx, js, "S", p.sent)
	p.publish(t, ctx, 5)

	if err := c.Restart(0); err != nil {
		t.Fatal(err)
	}
	waitReady(t, ctx, c, "restarted after SIGTERM")
	checkStream(t, ctx, js, "S", p.sent)

	log, err := os.ReadFile(c.LogPath(0))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"SIGKILL pid", "SIGTERM pid", "Server is ready"} {
		if !strings.Contains(string(log), want) {
			t.Errorf("log %s lacks %q", c.LogPath(0), want)
		}
	}
	if n := strings.Count(string(log), "=== natsproc"); n < 6 {
		t.Errorf("log %s has %d natsproc lines, want 3 starts and their ends", c.LogPath(0), n)
	}

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	errorsIs(t, c.Start(0), ErrClosed)
}

// TestStartFailure: a server that cannot start fails Start with its log, and
// one that dies later fails WaitReady at once.
func TestStartFailure(t *testing.T) {
	if testing.Short() {
		t.Skip("starts nats-server processes")
	}
	c := newCluster(t, Config{Servers: 1, Dir: t.TempDir(), ExtraConfig: []string{"no_such_option: {"}})
	err := c.StartAll()
	if err == nil {
		t.Fatal("a server with a broken config started")
	}
	if !strings.Contains(err.Error(), "exited before accepting clients") {
		t.Fatalf("start error lacks the cause: %v", err)
	}
	t.Logf("start error: %v", err)
	if c.Running(0) {
		t.Fatal("running after a failed start")
	}

	c = newCluster(t, Config{Servers: 1, Dir: t.TempDir()})
	if err := c.StartAll(); err != nil {
		t.Fatal(err)
	}
	// A kill from outside is a crash to the Cluster.
	proc, err := os.FindProcess(c.Pid(0))
	if err != nil {
		t.Fatal(err)
	}
	if err := proc.Kill(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for c.Running(0) {
		if ctx.Err() != nil {
			t.Fatal("still running 30 s after SIGKILL")
		}
		time.Sleep(10 * time.Millisecond)
	}
	errorsIs(t, c.WaitReady(ctx), ErrExited)
}

func TestConfig(t *testing.T) {
	if err := (Config{Dir: "/tmp/x"}).Validate(); err != nil {
		t.Fatalf("defaults with a dir: %v", err)
	}
	for name, cfg := range map[string]Config{
		"no dir":       {Servers: 3},
		"quote in dir": {Dir: `/tmp/a"b`},
		"negative":     {Dir: "/tmp/x", Servers: -1},
		"cluster name": {Dir: "/tmp/x", ClusterName: "a b"},
		"line break":   {Dir: "/tmp/x", ExtraConfig: []string{"a: 1\nb: 2"}},
	} {
		if err := cfg.Validate(); err == nil {
			t.Errorf("%s: valid", name)
		}
	}

	cfg := Config{Dir: "/d", SyncAlways: true, ExtraConfig: []string{"debug: true"}}.withDefaults()
	ports := []serverPorts{{4001, 6001, 8001}, {4002, 6002, 8002}, {4003, 6003, 8003}}
	conf := renderConf(cfg, ports, 1, filepath.Join("/d", "n2"))
	for _, want := range []string{
		"server_name: n2\n", "listen: 127.0.0.1:4002\n", "http: 127.0.0.1:8002\n",
		`store_dir: "/d/n2"`, "sync_interval: always\n", "name: eddy\n", "listen: 127.0.0.1:6002\n",
		"nats-route://127.0.0.1:6001\n", "nats-route://127.0.0.1:6003\n", "debug: true\n",
	} {
		if !strings.Contains(conf, want) {
			t.Errorf("config lacks %q:\n%s", want, conf)
		}
	}
	single := renderConf(Config{Dir: "/d"}.withDefaults(), ports[:1], 0, "/d/n1")
	if strings.Contains(single, "cluster") || strings.Contains(single, "sync_interval") {
		t.Errorf("single server config with a cluster block or sync_interval:\n%s", single)
	}

	v, err := pinnedVersion("../../go.mod", serverModule)
	if err != nil || !strings.HasPrefix(v, "v2.") {
		t.Errorf("pinned nats-server version: %q, %v", v, err)
	}
}
