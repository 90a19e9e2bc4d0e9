//go:build containers

// Package containers tests an eddy cluster as it is deployed: eddy-node and
// eddy-nats images (containers/build), three nats-server containers as a
// JetStream cluster and three eddy nodes, on a control network (gossip,
// Raft) and a data network (NATS), as compose.yaml lays them out. Faults
// are what Docker can do to a container: cut it off a network, kill it,
// stop it, start it again with its volume.
//
//	go test -tags containers -count=1 -v ./test/containers/...
//
// Everything the tests create (containers, networks, volumes, and the
// images eddy-node:test and eddy-nats:test) carries the label
// com.eddyrt.eddy=test and is removed at the end, and at the start of the
// next run if a run died before its clean-up. Two runs at once on one Docker daemon would remove
// each other's containers.
package containers

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/internal/procs"
)

// label marks what the tests create, for clean-up.
const label = "com.eddyrt.eddy=test"

// Timeouts of the harness's waits.
const (
	// natsReadyTimeout: JetStream answers within ~6 s of the servers'
	// start when the first meta election times out; more on a loaded host.
	natsReadyTimeout = time.Minute
	// clusterReadyTimeout: nodes gossip, elect a Raft leader and place
	// every partition within ~10 s here.
	clusterReadyTimeout = 90 * time.Second
	// stopTimeout is docker stop's grace: a node's graceful leave moves
	// its partitions first (compose.yaml's stop_grace_period).
	stopTimeout = 40 * time.Second
)

var (
	buildOnce sync.Once
	buildErr  error
)

// imageTag is the tag of the images the tests build and run
// (containers/build with EDDY_IMAGE_TAG), labelled as the tests' and
// removed with the rest: the images docker-compose runs (tag dev) are left
// alone.
const imageTag = "test"

// keepImages (EDDY_CONTAINERS_KEEP_IMAGES=1) keeps the images at the end,
// and runs those an earlier run kept instead of building them again: for
// quicker runs while working on the tests (not on eddy).
var keepImages = os.Getenv("EDDY_CONTAINERS_KEEP_IMAGES") == "1"

// requireDocker skips the test when there is no Docker to run it on,
// removes what an earlier run left and builds the images, once per test
// binary.
func requireDocker(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("docker"); err != nil {
		t.Skip("containers: no docker command")
	}
	if out, err := exec.Command("docker", "version", "--format", "{{.Server.Version}}").CombinedOutput(); err != nil {
		t.Skipf("containers: the Docker daemon does not answer: %v: %s", err, bytes.TrimSpace(out))
	}
	buildOnce.Do(func() {
		removeLabelled(t)
		if _, err := docker("image", "inspect", "eddy-node:"+imageTag, "eddy-nats:"+imageTag); err == nil && keepImages {
			t.Logf("containers: running the images kept by an earlier run (EDDY_CONTAINERS_KEEP_IMAGES=1)")
			return
		}
		start := time.Now()
		cmd := exec.Command("../../containers/build")
		cmd.Env = append(os.Environ(), "EDDY_IMAGE_TAG="+imageTag, "EDDY_IMAGE_LABEL=test")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("containers/build: %v\n%s", err, out)
			return
		}
		t.Logf("containers/build: images eddy-node:%s and eddy-nats:%s built in %v", imageTag, imageTag, time.Since(start).Round(time.Second))
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
}

// docker runs the docker CLI and returns its trimmed standard output.
func docker(args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("docker", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

func mustDocker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := docker(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// removeLabelled removes every container, network and volume labelled as
// the tests' (in that order: what is in use cannot go).
func removeLabelled(t *testing.T) {
	t.Helper()
	for _, kind := range []string{"container", "network", "volume"} {
		if err := removeKind(kind); err != nil {
			t.Logf("clean-up: %v", err)
		}
	}
}

// removeKind removes every container, network, volume or image (kind)
// labelled as the tests'.
func removeKind(kind string) error {
	args := []string{kind, "ls", "-q", "--filter", "label=" + label}
	if kind == "container" {
		args = []string{"ps", "-aq", "--filter", "label=" + label}
	}
	out, err := docker(args...)
	if err != nil {
		return err
	}
	ids := strings.Fields(out)
	if len(ids) == 0 {
		return nil
	}
	rm := []string{kind, "rm"}
	switch kind {
	case "container":
		rm = append(rm, "-f", "-v")
	case "image":
		rm = append(rm, "-f")
		slices.Sort(ids)
		ids = slices.Compact(ids) // an image with two tags is listed twice
	}
	_, err = docker(append(rm, ids...)...)
	return err
}

// TestMain removes the images the tests built once they have all run
// (unless they are kept: keepImages).
func TestMain(m *testing.M) {
	code := m.Run()
	if !keepImages {
		if _, err := exec.LookPath("docker"); err == nil {
			if err := removeKind("image"); err != nil {
				fmt.Fprintln(os.Stderr, "clean-up:", err)
			}
		}
	}
	os.Exit(code)
}

// network is a user network of the run, with a /24 subnet.
type network struct {
	name   string
	prefix string // "172.X.Y."
}

func (n network) ip(host int) string { return n.prefix + fmt.Sprint(host) }

// container is one container of the cluster, with its addresses.
type container struct {
	name string
	ips  map[*network]string

	mu  sync.Mutex
	cut map[*network]bool // networks it is disconnected from
}

// isCut reports whether n is disconnected from net.
func (n *container) isCut(net *network) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cut[net]
}

// isolated reports whether n is disconnected from any of its networks: its
// view of the cluster may be stale.
func (n *container) isolated() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, cut := range n.cut {
		if cut {
			return true
		}
	}
	return false
}

func (n *container) setCut(net *network, cut bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cut == nil {
		n.cut = map[*network]bool{}
	}
	n.cut[net] = cut
}

// dockerCluster is the deployment of compose.yaml under test: nats[i] and
// nodes[i], i in 0..2.
type dockerCluster struct {
	t   *testing.T
	run string // unique to the run, in every name
	// control carries the nodes' gossip and Raft, data their NATS
	// connections (and the test's), routes the NATS servers' cluster
	// traffic: each can be cut alone.
	control, data, routes *network
	nats, nodes           []*container
	hc                    *http.Client
}

// spareNATS is the nats-server no node is given (nats2).
const spareNATS = 1

// Addresses within each /24, as compose.yaml has them.
const (
	natsHost = 11 // nats1..3: .11 .. .13 on data and routes
	nodeHost = 21 // n1..3: .21 .. .23 on control and data
)

// newDockerCluster creates the networks and volumes and starts NATS and the
// nodes, and waits until JetStream answers and the nodes have placed every
// partition. Clean-up removes it all.
func newDockerCluster(t *testing.T, partitions int) *dockerCluster {
	requireDocker(t)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	c := &dockerCluster{t: t, run: "eddyt-" + hex.EncodeToString(b), hc: &http.Client{Timeout: 5 * time.Second}}
	t.Cleanup(func() {
		if t.Failed() {
			c.dumpLogs()
		}
		removeLabelled(t)
	})
	c.control, c.data, c.routes = c.createNetworks()
	for i := range 3 {
		n := &container{name: fmt.Sprintf("%s-nats%d", c.run, i+1), ips: map[*network]string{
			c.data: c.data.ip(natsHost + i), c.routes: c.routes.ip(natsHost + i)}}
		c.nats = append(c.nats, n)
	}
	for i := range 3 {
		n := &container{name: fmt.Sprintf("%s-n%d", c.run, i+1), ips: map[*network]string{
			c.control: c.control.ip(nodeHost + i), c.data: c.data.ip(nodeHost + i)}}
		c.nodes = append(c.nodes, n)
	}
	for i, n := range c.nats {
		var routes []string
		for j, o := range c.nats {
			if j != i {
				routes = append(routes, "nats://"+o.ips[c.routes]+":6222")
			}
		}
		c.create(n, "eddy-nats:"+imageTag, "-js", "-sd", "/data", "-n", fmt.Sprintf("nats%d", i+1), "--cluster_name", "eddy",
			"--cluster", "nats://0.0.0.0:6222", "--routes", strings.Join(routes, ","), "-m", "8222")
	}
	// The nodes are given nats1 and nats3 only (compose.yaml gives all
	// three), so that nats2 carries no node's connection: one scenario cuts
	// off a server only the JetStream cluster uses (nats2, which holds a
	// replica of every stream), another the server the nodes are connected
	// to (NATSServerOfNodesCutOff).
	var natsURLs, join []string
	for i, n := range c.nats {
		if i != spareNATS {
			natsURLs = append(natsURLs, "nats://"+n.ips[c.data]+":4222")
		}
	}
	for _, n := range c.nodes {
		join = append(join, n.ips[c.control]+":7946")
	}
	for i, n := range c.nodes {
		ip := n.ips[c.control]
		c.create(n, "eddy-node:"+imageTag, "run", "--node-id", fmt.Sprintf("n%d", i+1), "--zone", string(rune('a'+i)),
			"--data-dir", "/data", "--http", "0.0.0.0:8080", "--app", "bank,wordcount", "--partitions", fmt.Sprint(partitions),
			"--stream-replicas", "3", "--nats", strings.Join(natsURLs, ","), "--gossip", ip+":7946", "--raft", ip+":8300",
			"--expect", "3", "--join", strings.Join(join, ","))
	}
	c.startNATS()
	c.startNodes()
	return c
}

// createNetworks creates the control, data and routes networks on three
// /24s of 172.16.0.0/12 that no other network of the host uses (Docker
// refuses an overlapping pool; others are tried then).
func (c *dockerCluster) createNetworks() (control, data, routes *network) {
	t := c.t
	var lastErr error
	for range 40 {
		b := make([]byte, 2)
		_, _ = rand.Read(b)
		x, y := 16+int(b[0])%16, int(b[1])&^3 // 172.16-31, a third byte that is a multiple of 4: y .. y+2
		var nets []*network
		for i, name := range []string{"control", "data", "routes"} {
			n := &network{name: c.run + "-" + name, prefix: fmt.Sprintf("172.%d.%d.", x, y+i)}
			if _, lastErr = docker("network", "create", "--label", label, "--subnet", n.prefix+"0/24", n.name); lastErr != nil {
				break
			}
			nets = append(nets, n)
		}
		if len(nets) < 3 {
			for _, n := range nets {
				_, _ = docker("network", "rm", n.name)
			}
			continue
		}
		t.Logf("networks: control %s0/24, data %s0/24, routes %s0/24", nets[0].prefix, nets[1].prefix, nets[2].prefix)
		return nets[0], nets[1], nets[2]
	}
	t.Fatalf("no free subnets for the networks: %v", lastErr)
	return nil, nil, nil
}

// create creates container n from image with a labelled volume at /data and
// connects it to its networks; it does not start it.
func (c *dockerCluster) create(n *container, image string, args ...string) {
	t := c.t
	mustDocker(t, "volume", "create", "--label", label, n.name)
	first := true
	for net, ip := range n.ips {
		if first {
			run := []string{"create", "--name", n.name, "--hostname", n.name, "--label", label,
				"--network", net.name, "--ip", ip, "-v", n.name + ":/data", image}
			mustDocker(t, append(run, args...)...)
			first = false
			continue
		}
		mustDocker(t, "network", "connect", "--ip", ip, net.name, n.name)
	}
}

func (c *dockerCluster) startNATS() {
	c.t.Helper()
	for _, n := range c.nats {
		c.start(n)
	}
	c.waitNATSReady(c.nats...)
}

func (c *dockerCluster) startNodes() {
	c.t.Helper()
	for _, n := range c.nodes {
		c.start(n)
	}
	c.waitSettled()
}

// Faults and repairs, as Docker does them.

// disconnect cuts container n off network net.
func (c *dockerCluster) disconnect(n *container, net *network) {
	c.t.Helper()
	mustDocker(c.t, "network", "disconnect", net.name, n.name)
	n.setCut(net, true)
}

// reconnect connects container n to network net again, at its address.
func (c *dockerCluster) reconnect(n *container, net *network) {
	c.t.Helper()
	mustDocker(c.t, "network", "connect", "--ip", n.ips[net], net.name, n.name)
	n.setCut(net, false)
}

// kill SIGKILLs container n.
func (c *dockerCluster) kill(n *container) {
	c.t.Helper()
	mustDocker(c.t, "kill", n.name)
}

// stop SIGTERMs container n and waits for it to exit (SIGKILL after
// stopTimeout).
func (c *dockerCluster) stop(n *container) {
	c.t.Helper()
	mustDocker(c.t, "stop", "-t", fmt.Sprint(int(stopTimeout.Seconds())), n.name)
}

// start starts container n, with its volume and networks.
func (c *dockerCluster) start(n *container) {
	c.t.Helper()
	mustDocker(c.t, "start", n.name)
}

// exitCode is container n's exit code, once it has stopped.
func (c *dockerCluster) exitCode(n *container) string {
	c.t.Helper()
	return mustDocker(c.t, "inspect", "--format", "{{.State.ExitCode}}", n.name)
}

// Waits.

// waitNATSReady waits until every server in ns answers /healthz (JetStream
// enabled and current with its meta group and streams).
func (c *dockerCluster) waitNATSReady(ns ...*container) {
	c.t.Helper()
	c.waitFor(natsReadyTimeout, "nats-servers healthy", func(ctx context.Context) error {
		for _, n := range ns {
			if err := c.get(ctx, "http://"+n.ips[c.data]+":8222/healthz", nil); err != nil {
				return err
			}
		}
		return nil
	})
}

// waitSettled waits until every node answers /v1/cluster, all agree on a
// leader, see three alive members and every partition is running on a node.
func (c *dockerCluster) waitSettled() eddy.ClusterStatus {
	c.t.Helper()
	var st eddy.ClusterStatus
	c.waitFor(clusterReadyTimeout, "cluster settled", func(ctx context.Context) error {
		var leader string
		for i, n := range c.nodes {
			s, err := c.clusterStatus(ctx, n)
			if err != nil {
				return err
			}
			if s.Leader == "" || (i > 0 && s.Leader != leader) {
				return fmt.Errorf("%s: leader %q, %s's %q", n.name, s.Leader, c.nodes[0].name, leader)
			}
			leader = s.Leader
			alive := 0
			for _, m := range s.Members {
				if m.State == "alive" {
					alive++
				}
			}
			if alive != 3 {
				return fmt.Errorf("%s: %d members alive", n.name, alive)
			}
			if i == 0 {
				st = s
			}
		}
		if len(st.Partitions) == 0 {
			return errors.New("no partitions assigned")
		}
		for _, p := range st.Partitions {
			if p.State != "running" {
				return fmt.Errorf("%s/%d on %q: %s %s", p.Type, p.Partition, p.Active, p.State, p.Err)
			}
		}
		return nil
	})
	return st
}

// waitFor polls cond every 200 ms until it returns nil, and fails the test
// with cond's last error after timeout.
func (c *dockerCluster) waitFor(timeout time.Duration, what string, cond func(context.Context) error) {
	c.t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		err := cond(ctx)
		if err == nil {
			c.t.Logf("%s after %v", what, time.Since(start).Round(100*time.Millisecond))
			return
		}
		select {
		case <-ctx.Done():
			c.t.Fatalf("%s: not within %v: %v", what, timeout, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// HTTP.

// nodeURL is node n's HTTP API, on the control network, or on the data
// network while n is cut off the control network (the test's host is on
// both).
func (c *dockerCluster) nodeURL(n *container) string {
	if n.isCut(c.control) {
		return "http://" + n.ips[c.data] + ":8080"
	}
	return "http://" + n.ips[c.control] + ":8080"
}

func (c *dockerCluster) clusterStatus(ctx context.Context, n *container) (eddy.ClusterStatus, error) {
	var st eddy.ClusterStatus
	return st, c.get(ctx, c.nodeURL(n)+"/v1/cluster", &st)
}

// get GETs url into v (v nil: only the status counts).
func (c *dockerCluster) get(ctx context.Context, url string, v any) error {
	return procs.GetJSON(ctx, c.hc, url, v)
}

// dumpLogs logs where every partition stands, which server each NATS
// client is connected to and the tail of every container's output, for a
// failed test.
func (c *dockerCluster) dumpLogs() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, n := range c.nodes {
		st, err := c.clusterStatus(ctx, n)
		if err != nil {
			c.t.Logf("%s /v1/cluster: %v", n.name, err)
			continue
		}
		for _, p := range st.Partitions {
			c.t.Logf("%s/%d on %s epoch %d: %s %s, input lag %d, last commit %s", p.Type, p.Partition, p.Active, p.Epoch,
				p.State, p.Err, p.InputLag, p.LastCommit.Format(time.StampMilli))
		}
		break
	}
	for _, n := range c.nats {
		names, err := c.clients(ctx, n)
		c.t.Logf("%s clients: %q %v", n.name, names, err)
	}
	for _, n := range append(append([]*container{}, c.nats...), c.nodes...) {
		out, err := exec.Command("docker", "logs", "--tail", "40", n.name).CombinedOutput()
		if err != nil {
			c.t.Logf("docker logs %s: %v", n.name, err)
		}
		c.t.Logf("--- %s (last 40 lines)\n%s", n.name, out)
	}
}

// clients names the client connections of nats-server n.
func (c *dockerCluster) clients(ctx context.Context, n *container) ([]string, error) {
	var connz struct {
		Conns []struct {
			Name string `json:"name"`
		} `json:"connections"`
	}
	if err := c.get(ctx, "http://"+n.ips[c.data]+":8222/connz", &connz); err != nil {
		return nil, err
	}
	var names []string
	for _, cn := range connz.Conns {
		names = append(names, cn.Name)
	}
	return names, nil
}

// natsServer returns the first nats-server whose number of eddy node
// connections satisfies want, nil if none does.
func (c *dockerCluster) natsServer(want func(nodes int) bool) *container {
	for _, n := range c.nats {
		names, err := c.clients(context.Background(), n)
		if err != nil {
			c.t.Fatal(err)
		}
		nodes := 0
		for _, name := range names {
			if strings.HasPrefix(name, "eddy n") {
				nodes++
			}
		}
		if want(nodes) {
			return n
		}
	}
	return nil
}
