package eddy

import (
	"context"
	"maps"
	"time"

	"github.com/eddyrt/eddy/cluster"
	"github.com/eddyrt/eddy/partition"
)

// A cluster member reports its hot replicas' lags to the assignor, which
// promotes the replica with the least lag on a failover and hands a warm-up
// move over once the new node's replica is within Config.MaxLagForMove.

const (
	// lagReportEvery is how often a node looks at its hot replicas' lags and
	// reports them to the leader when they changed; a warm-up move completes
	// at most this long after its replica caught up.
	lagReportEvery = 200 * time.Millisecond
	// lagReportRefresh is how often lags are reported even when unchanged,
	// so a replica re-placed on this node gets a lag the assignor can use.
	lagReportRefresh = 5 * time.Second
)

// lagReporter sends the node's replicas' lags to the leader when they
// change, and every lagReportRefresh.
type lagReporter struct {
	n    *Node
	r    *reconciler
	cl   *cluster.Cluster
	last map[pkey]partition.Lag
	at   time.Time
}

// run reports every lagReportEvery until ctx ends.
func (lr *lagReporter) run(ctx context.Context) {
	tick := time.NewTicker(lagReportEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			lr.report(ctx)
		}
	}
}

func (lr *lagReporter) report(ctx context.Context) {
	now := map[pkey]partition.Lag{}
	for k, r := range lr.r.view.Load().replicas {
		if l := r.Lag(); l.Known() {
			l.At = time.Time{} // compare the lag, not when it was measured
			now[k] = l
		}
	}
	if len(now) == 0 || (maps.Equal(now, lr.last) && time.Since(lr.at) < lagReportRefresh) {
		return
	}
	lags := make([]cluster.LagReport, 0, len(now))
	for k, l := range now {
		lags = append(lags, cluster.LagReport{Type: k.typ, Partition: k.p, Records: l.Records, Behind: l.Behind})
	}
	rctx, cancel := context.WithTimeout(ctx, ctlTimeout)
	defer cancel()
	if err := lr.cl.ReportLag(rctx, lags); err != nil {
		lr.n.log.Debug("lag report not delivered; retrying", "err", err)
		return
	}
	lr.last, lr.at = now, time.Now()
}
