package eddy_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/internal/natstest"
	"github.com/eddyrt/eddy/internal/testkit"
)

// counterType counts the events of each key.
func counterType(name string, partitions int) eddy.ActorType {
	return eddy.ActorType{Name: name, Partitions: partitions, Handler: func(c *eddy.Context) error {
		var n int
		if _, err := c.Get(&n); err != nil {
			return err
		}
		return c.Set(n + 1)
	}}
}

// waitNode is a node whose logs go to t.Log and to a buffer the test reads.
type waitNode struct {
	*eddy.Node
	log *lockedBuffer
}

// newWaitNode returns an unstarted node for natsURL with a counter type of
// 4 partitions, changed by mutate.
func newWaitNode(t *testing.T, natsURL string, mutate func(*eddy.Config)) waitNode {
	t.Helper()
	buf := &lockedBuffer{}
	cfg := eddy.DefaultConfig()
	cfg.NodeID, cfg.DataDir, cfg.NATSURL, cfg.HTTPAddr = "n1", t.TempDir(), natsURL, ""
	cfg.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(buf, testkit.LogWriter(t)), nil))
	if mutate != nil {
		mutate(&cfg)
	}
	node, err := eddy.NewNode(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := node.Register(counterType("visits", 4)); err != nil {
		t.Fatal(err)
	}
	return waitNode{node, buf}
}

// start runs Start in the background; the channel yields its result. A node
// that started is stopped when the test ends.
func (n waitNode) start(t *testing.T, ctx context.Context) <-chan error {
	done := make(chan error, 1)
	go func() { done <- n.Start(ctx) }()
	t.Cleanup(func() { _ = n.Stop(context.Background()) })
	return done
}

// startErr runs Start and returns how long it took and its error.
func (n waitNode) startErr(t *testing.T) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	began := time.Now()
	err := <-n.start(t, ctx)
	return time.Since(began), err
}

// lines counts the log lines that hold s.
func (n waitNode) lines(s string) int { return strings.Count(n.log.String(), s) }

// waitStarted waits for Start's result, which must be nil.
func waitStarted(t *testing.T, done <-chan error, within time.Duration) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("start: %v", err)
		}
	case <-time.After(within):
		t.Fatalf("start did not return within %v", within)
	}
}

// waitCounted sends n events for key through NATS at url and waits until the
// node has counted them: its partitions run.
func waitCounted(t *testing.T, node *eddy.Node, url, key string, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	client, err := eddy.NewClient(nc)
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		if err := client.Send(ctx, "visits", key, 1); err != nil {
			t.Fatal(err)
		}
	}
	for {
		var got int
		err := node.Query(ctx, "visits", key, &got)
		if err == nil && got == n {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("counted %d of %d events: %v", got, n, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// NATS starts 5 s after the node (compose, systemd and Kubernetes start them
// together): Start waits, logs where it stands every few seconds, connects
// once NATS listens, and the partitions run.
func TestStartWaitsForNATSThatStartsLater(t *testing.T) {
	port := natstest.FreePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	node := newWaitNode(t, url, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	began := time.Now()
	done := node.start(t, ctx)
	select {
	case <-node.log.when("waiting for NATS to accept the connection"):
	case err := <-done:
		t.Fatalf("start returned %v before NATS was up", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no waiting line")
	}
	time.Sleep(5*time.Second - time.Since(began)) // the deliberate delay of the scenario
	srv := natstest.StartWith(t, func(o *server.Options) { o.Port = port })
	waitStarted(t, done, 10*time.Second)
	t.Logf("started %v after the node, %v after NATS", time.Since(began), time.Since(began)-5*time.Second)
	waitCounted(t, node.Node, srv.URL(), "alice", 3)
	waitAllRunning(t, node.Node, 30*time.Second)

	line := node.log.String()
	line = line[strings.Index(line, "waiting for NATS"):]
	line = line[:strings.IndexByte(line, '\n')]
	for _, want := range []string{"url=" + url, "waited=", `err="nats: no servers available for connection"`} {
		if !strings.Contains(line, want) {
			t.Errorf("waiting line %q does not say %s", line, want)
		}
	}
	if n := node.lines("waiting for NATS"); n > 2 {
		t.Errorf("%d waiting lines in 5 s: want one every few seconds, not one per attempt", n)
	}
	if node.lines("done waiting for NATS to accept the connection") != 1 {
		t.Errorf("no line says the wait is over")
	}
}

// With Config.NATSWait, or Start's context, shorter than NATS takes, Start
// gives up and says so.
func TestStartGivesUpAfterNATSWait(t *testing.T) {
	for _, tc := range []struct {
		name      string
		wait, ctx time.Duration
		cause     string
	}{
		{"NATSWait", time.Second, 30 * time.Second, "Config.NATSWait passed"},
		{"Start's context", 0, time.Second, "context deadline exceeded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := fmt.Sprintf("nats://127.0.0.1:%d", natstest.FreePort(t))
			node := newWaitNode(t, url, func(c *eddy.Config) { c.NATSWait = tc.wait })
			ctx, cancel := context.WithTimeout(context.Background(), tc.ctx)
			defer cancel()
			began := time.Now()
			err := <-node.start(t, ctx)
			took := time.Since(began)
			if !errors.Is(err, eddy.ErrNATSUnavailable) || !strings.Contains(err.Error(), "gave up waiting for NATS") ||
				!strings.Contains(err.Error(), url) || !strings.Contains(err.Error(), tc.cause) || !errors.Is(err, nats.ErrNoServers) {
				t.Fatalf("start: %v; want it to give up waiting for NATS at %s", err, url)
			}
			if took < time.Second || took > 3*time.Second {
				t.Errorf("gave up after %v; want 1s", took)
			}
			t.Logf("gave up after %v: %v", took, err)
		})
	}
}

// A URL list whose first server is down: nats.go tries the next one, and
// Start does not wait.
func TestStartWithFirstOfURLListDown(t *testing.T) {
	srv := natstest.Start(t)
	down := fmt.Sprintf("nats://127.0.0.1:%d", natstest.FreePort(t))
	node := newWaitNode(t, down+","+srv.URL(), nil)
	took, err := node.startErr(t)
	if err != nil {
		t.Fatal(err)
	}
	if got := node.NATSURL(); got != srv.URL() {
		t.Errorf("connected to %s, want %s", got, srv.URL())
	}
	if n := node.lines("waiting for"); n > 0 {
		t.Errorf("%d waiting lines, want none", n)
	}
	t.Logf("started in %v", took)
	waitCounted(t, node.Node, srv.URL(), "bob", 2)
}

// Wrong credentials fail Start at once with NATS's authorization error, not
// a wait; a password in the URL does not show in the error.
func TestStartFailsAtOnceOnWrongPassword(t *testing.T) {
	srv := natstest.StartWith(t, func(o *server.Options) { o.Username, o.Password = "eddy", "right" })
	for name, mutate := range map[string]func(*eddy.Config){
		"option": func(c *eddy.Config) { c.NATSOptions = []nats.Option{nats.UserInfo("eddy", "wrong")} },
		"url":    func(c *eddy.Config) { c.NATSURL = strings.Replace(c.NATSURL, "nats://", "nats://eddy:wrong@", 1) },
	} {
		t.Run(name, func(t *testing.T) {
			node := newWaitNode(t, srv.URL(), mutate)
			took, err := node.startErr(t)
			if !errors.Is(err, nats.ErrAuthorization) || !strings.Contains(strings.ToLower(err.Error()), "authorization") ||
				errors.Is(err, eddy.ErrNATSUnavailable) {
				t.Fatalf("start: %v; want an authorization error", err)
			}
			if strings.Contains(err.Error(), "wrong") {
				t.Errorf("the error shows the password: %v", err)
			}
			if took > 5*time.Second || node.lines("waiting for") > 0 { // a start that retried would wait its full 30 s
				t.Errorf("took %v and logged %d waiting lines; want a failure at once", took, node.lines("waiting for"))
			}
			t.Logf("failed in %v: %v", took, err)
		})
	}
}

// A TLS mismatch fails Start at once: the client wants TLS from a server
// without it, or the server's certificate is signed by no CA the client knows.
func TestStartFailsAtOnceOnTLSMismatch(t *testing.T) {
	plain := natstest.Start(t)
	cert, key := selfSignedCert(t)
	tlsSrv := natstest.StartWith(t, func(o *server.Options) {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: cert, KeyFile: key})
		if err != nil {
			t.Fatal(err)
		}
		o.TLSConfig, o.TLS = tc, true
	})
	for _, tc := range []struct {
		name string
		url  string
		opts []nats.Option
	}{
		{"client wants TLS", plain.URL(), []nats.Option{nats.Secure()}},
		{"unknown CA", tlsSrv.URL(), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node := newWaitNode(t, tc.url, func(c *eddy.Config) { c.NATSOptions = tc.opts })
			took, err := node.startErr(t)
			if err == nil || !strings.Contains(err.Error(), "TLS") || errors.Is(err, eddy.ErrNATSUnavailable) {
				t.Fatalf("start: %v; want a TLS error", err)
			}
			if took > 5*time.Second || node.lines("waiting for") > 0 { // a start that retried would wait its full 30 s
				t.Errorf("took %v and logged %d waiting lines; want a failure at once", took, node.lines("waiting for"))
			}
			t.Logf("failed in %v: %v (%T)", took, err, errors.Unwrap(err))
		})
	}
}

// selfSignedCert writes a certificate for 127.0.0.1 that no CA signed, and
// its key, and returns their files.
func selfSignedCert(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "eddy test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for f, b := range map[string]*pem.Block{certFile: {Type: "CERTIFICATE", Bytes: der}, keyFile: {Type: "EC PRIVATE KEY", Bytes: kder}} {
		if err := os.WriteFile(f, pem.EncodeToMemory(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}

// Streams that exist with a config eddy cannot use fail Start at once, with
// an error that names the stream, the field and both values; what eddy can
// fix (a shorter duplicate window) it updates, and logs.
func TestStartRefusesIncompatibleStreams(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name   string
		stream jetstream.StreamConfig
		says   []string
	}{
		{"input stream with 8 partitions", jetstream.StreamConfig{
			Name: "visits", Subjects: []string{"visits.*"}, Metadata: map[string]string{"eddy.partitions": "8"},
		}, []string{"input stream visits", "Metadata[eddy.partitions] 8", "needs 4", "partition count"}},
		{"input stream with one subject per key", jetstream.StreamConfig{
			Name: "visits", Subjects: []string{"visits.*"},
			SubjectTransform: &jetstream.SubjectTransformConfig{Source: "visits.*", Destination: "visits.{{partition(4,1)}}.{{wildcard(1)}}"},
		}, []string{"input stream visits", "SubjectTransform", "partition(4,1)", "needs none", "one subject per key"}},
		{"input stream with other subjects", jetstream.StreamConfig{
			Name: "visits", Subjects: []string{"visit.*"},
		}, []string{"input stream visits", "Subjects", "[visit.*]", "[visits.0 visits.1 visits.2 visits.3]"}},
		{"changelog of an earlier eddy, compacted", jetstream.StreamConfig{
			Name: "EDDY_CL_visits_2", Subjects: []string{"eddy.cl.visits.2.>"}, MaxMsgsPerSubject: 1, AllowAtomicPublish: true,
		}, []string{"changelog EDDY_CL_visits_2", "MaxMsgsPerSubject 1", "needs -1", "node reset"}},
		{"changelog without atomic publish", jetstream.StreamConfig{
			Name: "EDDY_CL_visits_0", Subjects: []string{"eddy.cl.visits.0.>"},
		}, []string{"changelog EDDY_CL_visits_0", "AllowAtomicPublish false", "needs true"}},
		{"changelog in memory", jetstream.StreamConfig{
			Name: "EDDY_CL_visits_1", Subjects: []string{"eddy.cl.visits.1.>"}, AllowAtomicPublish: true,
			Storage: jetstream.MemoryStorage,
		}, []string{"changelog EDDY_CL_visits_1", "Storage Memory", "needs File"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := natstest.Start(t)
			_, js := srv.Connect(t)
			if _, err := js.CreateStream(ctx, tc.stream); err != nil {
				t.Fatal(err)
			}
			node := newWaitNode(t, srv.URL(), nil)
			took, err := node.startErr(t)
			if !errors.Is(err, eddy.ErrIncompatibleStream) || errors.Is(err, eddy.ErrNATSUnavailable) {
				t.Fatalf("start: %v; want an incompatible stream", err)
			}
			for _, s := range tc.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("%q does not say %q", err, s)
				}
			}
			if took > time.Second || node.lines("waiting for") > 0 {
				t.Errorf("took %v and logged %d waiting lines; want a failure at once", took, node.lines("waiting for"))
			}
			t.Logf("failed in %v: %v", took, err)
		})
	}

	t.Run("updates a short duplicate window", func(t *testing.T) {
		srv := natstest.Start(t)
		_, js := srv.Connect(t)
		cl := jetstream.StreamConfig{Name: "EDDY_CL_visits_3", Subjects: []string{"eddy.cl.visits.3.>"},
			AllowAtomicPublish: true}
		in := jetstream.StreamConfig{Name: "visits", Subjects: []string{"visits.*"}, Duplicates: time.Minute}
		for _, c := range []jetstream.StreamConfig{cl, in} {
			if _, err := js.CreateStream(ctx, c); err != nil {
				t.Fatal(err)
			}
		}
		node := newWaitNode(t, srv.URL(), nil)
		if _, err := node.startErr(t); err != nil {
			t.Fatal(err)
		}
		st, err := js.Stream(ctx, "visits")
		if err != nil || st.CachedInfo().Config.Duplicates != eddy.DefaultConfig().DuplicateWindow {
			t.Fatalf("input stream not updated: %v", err)
		}
		st, err = js.Stream(ctx, changelog.NewSubjects("visits", 3).Stream())
		if err != nil || !st.CachedInfo().Config.AllowDirect {
			t.Fatalf("changelog not updated: %v", err)
		}
		for _, s := range []string{"stream=visits role=\"input stream\" field=Duplicates from=1m0s to=10m0s",
			"stream=EDDY_CL_visits_3 role=changelog field=AllowDirect from=false to=true"} {
			if node.lines(s) != 1 {
				t.Errorf("no log line says %s", s)
			}
		}
		waitCounted(t, node.Node, srv.URL(), "carol", 2)
	})
}

// A 3-server JetStream cluster started after the node: the node waits for
// the servers; with one server up it connects, and waits for JetStream
// while the cluster has no meta leader (one server is no quorum). Then the
// three start together (as compose starts them; one server alone first
// would hold its election timer of 4-9 s), elect a meta leader, and the node
// creates its streams with 3 replicas; the partitions run.
func TestStartWaitsForJetStreamCluster(t *testing.T) {
	c := natstest.NewCluster(t, 3)
	node := newWaitNode(t, c.URLs(), func(cfg *eddy.Config) { cfg.StreamReplicas = 3 })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	began := time.Now()
	done := node.start(t, ctx)
	for _, step := range []struct {
		waiting string
		then    func()
	}{
		{"waiting for NATS to accept the connection", func() { c.Start(0) }},
		{"waiting for JetStream to answer", func() { c.Stop(0); c.Start() }},
	} {
		select {
		case <-node.log.when(step.waiting):
		case err := <-done:
			t.Fatalf("start returned %v before %s", err, step.waiting)
		case <-time.After(20 * time.Second):
			t.Fatalf("no line says %s", step.waiting)
		}
		step.then()
	}
	up := time.Now()
	waitStarted(t, done, 45*time.Second)
	t.Logf("started %v after the cluster (%v after the node)",
		time.Since(up).Round(time.Millisecond), time.Since(began).Round(time.Millisecond))

	nc, err := nats.Connect(c.URLs())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	waitCounted(t, node.Node, c.URLs(), "dave", 2)
	waitAllRunning(t, node.Node, 30*time.Second)
	names := []string{"visits", "visits_dlq"}
	for p := range 4 {
		names = append(names, changelog.NewSubjects("visits", p).Stream())
	}
	for _, name := range names {
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		info := st.CachedInfo()
		if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			t.Errorf("%s: %d replicas (%+v), want 3", name, info.Config.Replicas, info.Cluster)
		}
	}
}

// waitAllRunning waits until every partition of node runs.
func waitAllRunning(t *testing.T, node *eddy.Node, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st, err := node.Status()
		if err == nil && !slices.ContainsFunc(st, func(s eddy.PartitionStatus) bool { return !s.Running }) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("partitions not all running after %v: %+v, %v", within, st, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
