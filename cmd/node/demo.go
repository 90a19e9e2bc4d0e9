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
	out := func(format string, a ...any) { fmt.Fprintf(c.stdout, format+"\n", a...) }
	pc, err := newProcCluster(procConfig{Dir: *dir, Exe: exe, Partitions: *partitions, Replicas: max(*replicas, 0)})
	if pc != nil {
		defer pc.close()
	}
	if err != nil {
		return err
	}
	out("demo: NATS with JetStream at %s; node data and logs under %s", pc.natsURL, *dir)

	ids := []string{"n1", "n2", "n3"}
	start := time.Now()
	for _, id := range ids {
		if err := pc.start(id, len(ids)); err != nil {
			return err
		}
	}
	st, err := pc.waitSettled(ctx, ids, 90*time.Second)
	if err != nil {
		return fmt.Errorf("%w (logs in %s)", err, *dir)
	}
	out("demo: 3 nodes formed a cluster in %v; Raft leader %s (term %d)", time.Since(start).Round(time.Millisecond), st.Leader, st.Term)
	printOwners(out, st)

	load := newBankLoad(pc, *accounts)
	if err := load.fund(ctx); err != nil {
		return err
	}
	sum, err := load.waitTotals(ctx, ids[0], 60*time.Second)
	if err != nil {
		return err
	}
	out("demo: %d accounts funded; balances add up to %d", *accounts, sum.Balance)

	lctx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var loadErr error
	wg.Go(func() { loadErr = load.run(lctx, *rate, uint64(time.Now().UnixNano())) })
	defer func() { stopLoad(); wg.Wait() }()
	time.Sleep(2 * time.Second)

	var detections, recoveries []time.Duration
	for k := range *kills {
		st, err := pc.settled(ctx, ids)
		if err != nil {
			return err
		}
		victim := pickVictim(st, k)
		owned := ownedBy(st, victim)
		out("demo: kill -9 %s (it owns partitions %v) under %v transfers/s", victim, owned, *rate)
		killed := time.Now()
		if err := pc.kill(victim); err != nil {
			return err
		}
		survivors := slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return id == victim })
		detected, err := waitDead(ctx, pc, survivors[0], victim, killed)
		if err != nil {
			return err
		}
		after, err := pc.waitSettled(ctx, survivors, 60*time.Second)
		if err != nil {
			return err
		}
		recovered := time.Since(killed)
		detections, recoveries = append(detections, detected), append(recoveries, recovered)
		out("demo: %s seen dead after %v; all its partitions active again after %v:", victim, detected.Round(time.Millisecond), recovered.Round(time.Millisecond))
		restored := map[string]string{} // "node/partition" -> how it restored
		for _, id := range survivors {
			for _, m := range pc.logged(id, "restored from changelog", killed) {
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
				out("        bank/%d: %s -> %s (epoch %d): %s", p.Partition, victim, p.Active, p.Epoch, how)
			}
		}
		restarted := time.Now()
		if err := pc.start(victim, 0); err != nil {
			return err
		}
		if _, err := pc.waitSettled(ctx, ids, 90*time.Second); err != nil {
			return err
		}
		out("demo: %s restarted and the partitions rebalanced onto it in %v", victim, time.Since(restarted).Round(time.Millisecond))
	}
	stopLoad()
	wg.Wait()
	if loadErr != nil {
		return loadErr
	}
	sum, err = load.waitTotals(ctx, ids[0], 60*time.Second)
	if err != nil {
		return err
	}
	out("demo: %d transfers sent; after the kills balances add up to %d (deposited %d); debits %d = credits %d; rejected %d",
		load.sent(), sum.Balance, sum.Deposited, sum.Debits, sum.Credits, sum.Rejected)
	if *kills > 1 {
		out("demo: over %d kills: detection p50 %v, all active again p50 %v", *kills,
			percentile(detections, 50).Round(time.Millisecond), percentile(recoveries, 50).Round(time.Millisecond))
	}
	if keep {
		out("demo: logs in %s/<node>.log", *dir)
	}
	return nil
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
