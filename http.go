package eddy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy/partition"
	"github.com/eddyrt/eddy/statestore"
)

// Handler is the node's HTTP API:
//
//	GET /v1/state/{type}/{key}[?store=name]  the committed state of a key, as JSON, from its owner;
//	    [&max_lag=500ms]                     or from the nearest hot replica at most that stale (see
//	                                         MaxStaleness); served_by says "replica" or "owner",
//	                                         served_by_node which node answered
//	                                         (503 at once when the key's partition does not run, with why)
//	GET /v1/status                           this node's partitions: state (and why when not running),
//	                                         epoch, offset, changelog sequence, input lag, last commit
//	GET /v1/cluster                          members, Raft leader and term, the assignment with each
//	                                         partition's state on its node, replica lags
//	GET /metrics                             Prometheus metrics
//	GET /healthz                             200 while the node runs
func (n *Node) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/state/{type}/{key}", n.handleState)
	mux.HandleFunc("GET /v1/tables/{name}/{key}", n.handleTable)
	mux.HandleFunc("GET /v1/tables", n.handleTables)
	mux.HandleFunc("GET /v1/status", n.handleStatus)
	mux.HandleFunc("GET /v1/cluster", n.handleCluster)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	if n.gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(n.gatherer, promhttp.HandlerOpts{}))
	}
	return mux
}

func (n *Node) handleState(w http.ResponseWriter, r *http.Request) {
	store := r.URL.Query().Get("store")
	if store == "" {
		store = partition.DefaultStore
	}
	maxLag := time.Duration(-1)
	if s := r.URL.Query().Get("max_lag"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "max_lag: want a duration such as 500ms"})
			return
		}
		maxLag = d
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	var by Served
	b, err := n.queryRaw(ctx, r.PathValue("type"), r.PathValue("key"), InStore(store), MaxStaleness(maxLag), ServedBy(&by))
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrUnknownType):
		writeJSON(w, http.StatusNotFound, map[string]string{"error": err.Error()})
		return
	case errors.Is(err, ErrUnavailable):
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error(), "reason": "partition not running"})
		return
	case err != nil:
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
		return
	}
	var v any
	if err := msgpack.Unmarshal(b, &v); err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"type": r.PathValue("type"), "key": r.PathValue("key"), "store": store, "value": v,
		"served_by": by.role(), "served_by_node": by.Node})
}

// handleTables lists the node's global tables and their progress.
func (n *Node) handleTables(w http.ResponseWriter, _ *http.Request) {
	ts, err := n.Tables()
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"tables": ts})
}

// handleTable answers a global table's value of a key from this node's copy.
func (n *Node) handleTable(w http.ResponseWriter, r *http.Request) {
	name, key := r.PathValue("name"), r.PathValue("key")
	n.mu.Lock()
	g := n.globals[name]
	n.mu.Unlock()
	if g == nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("%v: %s", ErrUnknownTable, name)})
		return
	}
	b, err := g.Get(key)
	switch {
	case errors.Is(err, statestore.ErrNotFound):
		writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("%v: %s/%s", ErrNotFound, name, key)})
		return
	case err != nil:
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
		return
	}
	var v any
	if err := decodeValue(b, &v); err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"table": name, "key": key, "value": v, "applied": g.Applied()})
}

func (n *Node) handleStatus(w http.ResponseWriter, r *http.Request) {
	st, err := n.Status()
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": err.Error(), "partitions": st})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"node": n.cfg.NodeID, "partitions": st})
}

func (n *Node) handleCluster(w http.ResponseWriter, r *http.Request) {
	st, err := n.Cluster(r.Context())
	switch {
	case errors.Is(err, ErrNotClustered):
		writeJSON(w, http.StatusNotFound, map[string]string{"error": err.Error()})
	case err != nil:
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
	default:
		writeJSON(w, http.StatusOK, st)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// serveHTTP serves Handler on Config.HTTPAddr; n.mu is held.
func (n *Node) serveHTTP() error {
	ln, err := net.Listen("tcp", n.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("http: %w", err)
	}
	n.httpAddr = ln.Addr().String()
	srv := &http.Server{Handler: n.Handler(), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	n.http, n.httpDone = srv, done
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("http server", "err", err)
		}
	}()
	return nil
}
