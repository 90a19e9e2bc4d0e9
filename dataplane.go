package eddy

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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

// Probing JetStream through the node's server.
const (
	// jsProbeEvery is how often the node asks JetStream for its account
	// info, a request its server routes to the JetStream meta leader.
	jsProbeEvery = 2 * time.Second
	// jsProbeGiveUp is how long the probes may fail, while the connection
	// is up, before the node moves to another server of its URL list. It
	// is longer than a JetStream meta leader election after a server is
	// lost (a few seconds), during which every server fails them.
	jsProbeGiveUp = 10 * time.Second
)

// probeJetStream moves the node to another NATS server when the one it is
// connected to answers but cannot reach JetStream: a server cut off from
// its cluster's peers keeps its clients' connections, so no ping fails and
// nats.go never reconnects, yet no commit, read or forward gets through.
// When JetStream's account info has not come back for jsProbeGiveUp while
// connected, and the node knows more than one server, it forces a
// reconnection; nats.go tries the other servers first. With a single
// server there is nowhere to go: the partitions retry in place. stop ends
// the probe and waits for it.
func (n *Node) probeJetStream(nc *nats.Conn, js jetstream.JetStream) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(jsProbeEvery)
		defer tick.Stop()
		var failingSince time.Time
		var lastErr error
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if !nc.IsConnected() {
				failingSince = time.Time{} // the pings' business (watchDataPlane)
				continue
			}
			pctx, pcancel := context.WithTimeout(ctx, jsProbeEvery)
			_, err := js.AccountInfo(pctx)
			pcancel()
			switch {
			case err == nil:
				if !failingSince.IsZero() {
					n.log.Info("JetStream answers again", "server", redactURL(nc.ConnectedUrl()), "after", time.Since(failingSince).Round(time.Second))
				}
				failingSince = time.Time{}
				continue
			case ctx.Err() != nil:
				return
			case failingSince.IsZero():
				failingSince, lastErr = time.Now(), err
				continue
			}
			lastErr = err
			if time.Since(failingSince) < jsProbeGiveUp || len(nc.Servers()) < 2 {
				continue
			}
			n.log.Warn("JetStream does not answer through this NATS server though it is connected; moving to another server",
				"server", redactURL(nc.ConnectedUrl()), "for", time.Since(failingSince).Round(time.Second), "err", lastErr)
			if err := nc.ForceReconnect(); err != nil {
				n.log.Warn("could not reconnect to another NATS server", "err", err)
			}
			failingSince = time.Time{}
		}
	})
	return func() {
		cancel()
		wg.Wait()
	}
}
