package natsproc

import (
	"fmt"
	"strings"
)

// serverPorts are the loopback ports of one server, fixed for its lifetime.
type serverPorts struct {
	client, route, monitor int
}

// renderConf writes the nats-server config file of server i of a cluster with
// the given ports: client, monitoring (http) and, for more than one server, a
// cluster block routing to every server (a route to itself is ignored by the
// server). cfg has its defaults applied.
func renderConf(cfg Config, ports []serverPorts, i int, storeDir string) string {
	p := ports[i]
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by eddy internal/natsproc; rewritten on every start.\n")
	fmt.Fprintf(&b, "server_name: %s\n", serverName(i))
	fmt.Fprintf(&b, "listen: 127.0.0.1:%d\n", p.client)
	fmt.Fprintf(&b, "http: 127.0.0.1:%d\n", p.monitor)
	fmt.Fprintf(&b, "\njetstream {\n")
	fmt.Fprintf(&b, "  store_dir: %q\n", storeDir)
	if cfg.SyncAlways {
		fmt.Fprintf(&b, "  sync_interval: always\n")
	}
	fmt.Fprintf(&b, "}\n")
	if len(ports) > 1 {
		fmt.Fprintf(&b, "\ncluster {\n")
		fmt.Fprintf(&b, "  name: %s\n", cfg.ClusterName)
		fmt.Fprintf(&b, "  listen: 127.0.0.1:%d\n", p.route)
		fmt.Fprintf(&b, "  routes: [\n")
		for _, o := range ports {
			fmt.Fprintf(&b, "    nats-route://127.0.0.1:%d\n", o.route)
		}
		fmt.Fprintf(&b, "  ]\n}\n")
	}
	if len(cfg.ExtraConfig) > 0 {
		fmt.Fprintf(&b, "\n# Config.ExtraConfig\n")
		for _, l := range cfg.ExtraConfig {
			fmt.Fprintf(&b, "%s\n", l)
		}
	}
	return b.String()
}

// serverName is the server_name of server i: n1 for 0, n2 for 1, ...
func serverName(i int) string { return fmt.Sprintf("n%d", i+1) }
