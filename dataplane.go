package eddy

import (
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/eddyrt/eddy/cluster"
)

// dataPlaneCheck is how often the data-plane watcher looks at the NATS
// connection besides its status events (which nats.go may drop when they
// come faster than they are read).
const dataPlaneCheck = time.Second

// watchDataPlane tells the cluster, through this node's gossip metadata,
// whenever the node loses its NATS connection and when it has it back
// (cluster.Cluster.SetDataPlaneDown). A node cut off NATS while it still
// reaches its peers cannot commit; the leader fails its partitions over to
// nodes that can, after cluster.Config.DataPlaneGrace, unless every node
// has lost NATS. How soon a silent cut is noticed is the connection's
// pings' business (connect). stop ends the watch and waits for it.
func (n *Node) watchDataPlane(cl *cluster.Cluster, nc *nats.Conn) (stop func()) {
	events := nc.StatusChanged(nats.CONNECTED, nats.RECONNECTING, nats.DISCONNECTED, nats.CLOSED)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(dataPlaneCheck)
		defer tick.Stop()
		down := false
		for {
			if now := !nc.IsConnected(); now != down {
				if err := cl.SetDataPlaneDown(now); err != nil {
					n.log.Warn("could not tell the cluster about the NATS connection", "down", now, "err", err)
				} else {
					down = now
					if down {
						n.log.Warn("NATS connection lost: the cluster is told, and moves this node's partitions if other nodes reach NATS")
					} else {
						n.log.Info("NATS connection back: the cluster is told")
					}
				}
			}
			select {
			case <-done:
				return
			case <-events:
			case <-tick.C:
			}
		}
	})
	return func() {
		close(done)
		nc.RemoveStatusListener(events)
		wg.Wait()
	}
}
