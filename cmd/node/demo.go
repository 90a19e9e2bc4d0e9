package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/examples/apps"
)

// demo starts NATS and three node processes on loopback, runs the bank
// under load, SIGKILLs a node (more than once with --kills) and prints what
// happened: detection time, partitions moved, time until every partition
// was active again, and the bank's totals before and after.
func (c *cli) demo(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("node demo", flag.ContinueOnError)
	partitions := fs.Int("partitions", 12, "`partitions` of the bank's input stream")
	replicas := fs.Int("replicas", eddy.DefaultReplicationFactor, "hot `replicas` per partition (0: a failover restores from the changelog)")
	accounts := fs.Int("accounts", 1000, "bank `accounts` (the state size: one key each)")
	rate := fs.Float64("rate", 300, "transfers per `second` during the demo")
	kills := fs.Int("kills", 1, "how many times to SIGKILL a node (it restarts in between)")
	dir := fs.String("dir", "", "`directory` for the nodes' data and logs (default: a temporary one, removed at the end)")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if *kills < 1 || *partitions < 3 || *accounts < 2 || *rate <= 0 {
		return errors.New("want --kills >= 1, --partitions >= 3, --accounts >= 2 and --rate > 0")
	}
	keep := *dir != ""
	cleanup, err := workDir(dir, "eddy-demo-")
	if err != nil {
		return err
	}
	defer cleanup()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	d := &demoRun{
		out:  func(format string, a ...any) { fmt.Fprintf(c.stdout, format+"\n", a...) },
		ids:  []string{"n1", "n2", "n3"},
		rate: *rate,
	}
	pc, err := newProcCluster(procConfig{Dir: *dir, Exe: exe, Partitions: *partitions, Replicas: max(*replicas, 0)})
	if pc != nil {
		defer pc.close()
	}
	if err != nil {
		return err
	}
	d.pc = pc
	d.out("demo: NATS with JetStream at %s; node data and logs under %s", pc.natsURL, *dir)

	if err := d.form(ctx, *dir); err != nil {
		return err
	}
	load, err := d.fund(ctx, *accounts)
	if err != nil {
		return err
	}

	lctx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var loadErr error
	wg.Go(func() { loadErr = load.run(lctx, *rate, uint64(time.Now().UnixNano())) })
	defer func() { stopLoad(); wg.Wait() }()
	time.Sleep(2 * time.Second) // the load runs a while before the first kill

	var detections, recoveries []time.Duration
	for k := range *kills {
		detected, recovered, err := d.killOnce(ctx, k)
		if err != nil {
			return err
		}
		detections, recoveries = append(detections, detected), append(recoveries, recovered)
	}
	stopLoad()
	wg.Wait()
	if loadErr != nil {
		return loadErr
	}
	sum, err := load.waitTotals(ctx, d.ids[0], 60*time.Second)
	if err != nil {
		return err
	}
	logDir := ""
	if keep {
		logDir = *dir
	}
	d.report(load.sent(), sum, detections, recoveries, logDir)
	return nil
}

// demoRun is one run of `node demo`: the cluster of three node processes
// and where the demo prints what happens to it.
type demoRun struct {
	out  func(format string, a ...any)
	pc   *procCluster
	ids  []string // the nodes, all of which run between kills
	rate float64  // transfers per second of the load
}

// form starts the nodes, waits until they have formed a cluster with every
// partition active, and prints the leader and who owns what.
func (d *demoRun) form(ctx context.Context, dir string) error {
	start := time.Now()
	for _, id := range d.ids {
		if err := d.pc.start(id, len(d.ids)); err != nil {
			return err
		}
	}
	st, err := d.pc.waitSettled(ctx, d.ids, 90*time.Second)
	if err != nil {
		return fmt.Errorf("%w (logs in %s)", err, dir)
	}
	d.out("demo: 3 nodes formed a cluster in %v; Raft leader %s (term %d)", time.Since(start).Round(time.Millisecond), st.Leader, st.Term)
	printOwners(d.out, st)
	return nil
}

// fund deposits into accounts bank accounts and waits until the balances
// add up; it returns the load that then sends transfers between them.
func (d *demoRun) fund(ctx context.Context, accounts int) (*bankLoad, error) {
	load := newBankLoad(d.pc, accounts)
	if err := load.fund(ctx); err != nil {
		return nil, err
	}
	sum, err := load.waitTotals(ctx, d.ids[0], 60*time.Second)
	if err != nil {
		return nil, err
	}
	d.out("demo: %d accounts funded; balances add up to %d", accounts, sum.Balance)
	return load, nil
}

// killOnce is the fault the demo injects, once: it SIGKILLs a node that owns
// partitions (a different one each round where it can), waits until the
// survivors see it dead and every partition is active again, prints how each
// of its partitions moved, and restarts it. It returns how long after the
// kill the node was seen dead and every partition was active again.
func (d *demoRun) killOnce(ctx context.Context, round int) (detected, recovered time.Duration, err error) {
	st, err := d.pc.settled(ctx, d.ids)
	if err != nil {
		return 0, 0, err
	}
	victim := pickVictim(st, round)
	owned := ownedBy(st, victim)
	d.out("demo: kill -9 %s (it owns partitions %v) under %v transfers/s", victim, owned, d.rate)
	killed := time.Now()
	if err := d.pc.kill(victim); err != nil {
		return 0, 0, err
	}
	survivors := slices.DeleteFunc(slices.Clone(d.ids), func(id string) bool { return id == victim })
	detected, err = waitDead(ctx, d.pc, survivors[0], victim, killed)
	if err != nil {
		return 0, 0, err
	}
	after, err := d.pc.waitSettled(ctx, survivors, 60*time.Second)
	if err != nil {
		return 0, 0, err
	}
	recovered = time.Since(killed)
	d.out("demo: %s seen dead after %v; all its partitions active again after %v:", victim, detected.Round(time.Millisecond), recovered.Round(time.Millisecond))
	d.printMoves(after, victim, owned, survivors, killed)
	restarted := time.Now()
	if err := d.pc.start(victim, 0); err != nil {
		return 0, 0, err
	}
	if _, err := d.pc.waitSettled(ctx, d.ids, 90*time.Second); err != nil {
		return 0, 0, err
	}
	d.out("demo: %s restarted and the partitions rebalanced onto it in %v", victim, time.Since(restarted).Round(time.Millisecond))
	return detected, recovered, nil
}

// printMoves prints, for each partition victim owned, where it is active now
// and how it got its state there: from the changelog (as the survivors
// logged since killed) or from a local store that was current.
func (d *demoRun) printMoves(after eddy.ClusterStatus, victim string, owned []int, survivors []string, killed time.Time) {
	restored := map[string]string{} // "node/partition" -> how it restored
	for _, id := range survivors {
		for _, m := range d.pc.logged(id, "restored from changelog", killed) {
			how := fmt.Sprintf("replayed %v changelog records", m["records"])
			if m["full"] == true {
				how = fmt.Sprintf("replayed the whole changelog: %v records in %vms", m["records"], m["took"].(float64)/1e6)
			}
			restored[fmt.Sprintf("%s/%v", id, m["partition"])] = how
		}
	}
	for _, p := range after.Partitions {
		if slices.Contains(owned, p.Partition) {
			how, ok := restored[fmt.Sprintf("%s/%d", p.Active, p.Partition)]
			if !ok {
				how = "its local store was current"
			}
			d.out("        bank/%d: %s -> %s (epoch %d): %s", p.Partition, victim, p.Active, p.Epoch, how)
		}
	}
}

// report prints the demo's outcome: the bank's totals after the kills
// against the transfers sent, with more than one kill the median detection
// and recovery times, and where the logs are when logDir is kept ("" when
// it is removed).
func (d *demoRun) report(sent int64, sum apps.Account, detections, recoveries []time.Duration, logDir string) {
	d.out("demo: %d transfers sent; after the kills balances add up to %d (deposited %d); debits %d = credits %d; rejected %d",
		sent, sum.Balance, sum.Deposited, sum.Debits, sum.Credits, sum.Rejected)
	if len(detections) > 1 {
		d.out("demo: over %d kills: detection p50 %v, all active again p50 %v", len(detections),
			percentile(detections, 50).Round(time.Millisecond), percentile(recoveries, 50).Round(time.Millisecond))
	}
	if logDir != "" {
		d.out("demo: logs in %s/<node>.log", logDir)
	}
}

// workDir makes *dir a temporary directory (removed by cleanup) when the
// user named none; a named one is kept.
func workDir(dir *string, prefix string) (cleanup func(), err error) {
	if *dir != "" {
		return func() {}, os.MkdirAll(*dir, 0o755)
	}
	d, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, err
	}
	*dir = d
	return func() { os.RemoveAll(d) }, nil
}

// benchDir is workDir for a bench, which needs fresh streams: a directory
// the user named must be empty.
func benchDir(dir *string, prefix string) (cleanup func(), err error) {
	if *dir != "" {
		if entries, err := os.ReadDir(*dir); err == nil && len(entries) > 0 {
			return nil, fmt.Errorf("--dir %s is not empty: the bench needs fresh streams", *dir)
		}
	}
	return workDir(dir, prefix)
}

// pickVictim picks a node that owns partitions and is not the Raft leader,
// a different one each round where it can.
func pickVictim(st eddy.ClusterStatus, round int) string {
	var cands []string
	for _, m := range st.Members {
		if m.ID != st.Leader && len(ownedBy(st, m.ID)) > 0 {
			cands = append(cands, m.ID)
		}
	}
	if len(cands) == 0 {
		return st.Leader
	}
	return cands[round%len(cands)]
}

func ownedBy(st eddy.ClusterStatus, id string) []int {
	var ps []int
	for _, p := range st.Partitions {
		if p.Active == id {
			ps = append(ps, p.Partition)
		}
	}
	return ps
}

func printOwners(out func(string, ...any), st eddy.ClusterStatus) {
	owners := map[string][]string{}
	for _, p := range st.Partitions {
		owners[p.Active] = append(owners[p.Active], fmt.Sprint(p.Partition))
	}
	ids := make([]string, 0, len(owners))
	for id := range owners {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		out("        %s: partitions %s", id, strings.Join(owners[id], " "))
	}
}

// waitDead waits until node via sees victim as dead in gossip.
func waitDead(ctx context.Context, pc *procCluster, via, victim string, since time.Time) (time.Duration, error) {
	deadline := since.Add(60 * time.Second)
	for time.Now().Before(deadline) {
		st, err := pc.clusterStatus(ctx, via)
		if err == nil {
			for _, m := range st.Members {
				if m.ID == victim && m.State != "alive" {
					return time.Since(since), nil
				}
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	return 0, fmt.Errorf("%s never saw %s dead", via, victim)
}

// percentile returns the p-th percentile (nearest rank) of ds.
func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (p*len(s)+99)/100 - 1
	return s[max(i, 0)]
}
