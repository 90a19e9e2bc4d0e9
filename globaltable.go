package eddy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/partition"
	"github.com/eddyrt/eddy/table"
)

// GlobalTable is a table of a whole stream kept on every node: the latest
// value of each key, read by handlers with Context.Global and by any node's
// GET /v1/tables/{name}/{key}. Every node materializes the stream into a
// local store of its own, whether or not it runs partitions, and keeps the
// stream sequence it applied there, so a restart reads only the records
// published since. At start a node's partitions take no input before the
// node's global tables have caught up with their streams (their
// bootstrap, logged with its progress and in eddy_table_* metrics); Stop
// interrupts a bootstrap.
//
// A record is a message of the stream: its data is the key's value
// (msgpack, as Context.Emit writes it, or JSON), and a message with the
// header Eddy-Tombstone (or NATS KV's KV-Operation: DEL or PURGE) deletes
// the key (Context.EmitTombstone). A record without a key, or whose value
// is neither msgpack nor JSON, goes to the table's dead-letter stream
// (eddy_dlq_<name>, with its reason in Eddy-Error) and the table moves past
// it.
type GlobalTable struct {
	// Name is the table and its stream: letters, digits, '-', '_'.
	Name string
	// Partitions and KeyedSubjects lay the stream out as an actor type's
	// input stream, when the node creates it (an existing stream keeps its
	// layout, read from its metadata). KeyedSubjects, the default for a
	// table, gives one subject per key, <name>.<key>, and the stream is
	// created compacted (the latest record of each key is kept: the stream
	// is the table's changelog); set PartitionSubjects for one subject per
	// partition with the key in the Eddy-Key header, which keeps every
	// record (a node's first start reads them all). Partitions is 1 when 0.
	Partitions        int
	PartitionSubjects bool
}

// Validate checks the table's declaration.
func (t GlobalTable) Validate() error {
	switch {
	case !changelog.ValidName(t.Name):
		return fmt.Errorf("%w: global table name %q: use letters, digits, '-' and '_'", ErrInvalidConfig, t.Name)
	case t.Partitions < 0:
		return fmt.Errorf("%w: global table %s: %d partitions", ErrInvalidConfig, t.Name, t.Partitions)
	}
	return nil
}

func (t GlobalTable) input() partition.Input {
	return partition.Input{Type: t.Name, Partitions: max(t.Partitions, 1), KeyedSubjects: !t.PartitionSubjects}
}

// RegisterGlobalTable adds a global table (see GlobalTable). It must be
// called before Start.
func (n *Node) RegisterGlobalTable(t GlobalTable) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.running || n.starting || n.stopping {
		return fmt.Errorf("%w: register global table %s before Start", ErrStarted, t.Name)
	}
	if err := t.Validate(); err != nil {
		return err
	}
	if n.globalTypes[t.Name] != nil || n.types[t.Name] != nil {
		return fmt.Errorf("%w: %s registered twice (as a table or an actor type)", ErrInvalidConfig, t.Name)
	}
	if n.globalTypes == nil {
		n.globalTypes = make(map[string]*GlobalTable)
	}
	n.globalTypes[t.Name] = &t
	n.globalOrder = append(n.globalOrder, t.Name)
	return nil
}

// startGlobalTables starts every registered global table's bootstrap; the
// partitions wait for them (partition.Config.Ready).
func (n *Node) startGlobalTables(ctx context.Context) error {
	n.globals = make(map[string]*table.Global, len(n.globalOrder))
	for _, name := range n.globalOrder {
		st, err := n.js.Stream(ctx, name)
		if err != nil {
			return fmt.Errorf("global table %s: %w", name, err)
		}
		info := st.CachedInfo()
		if info.Config.MaxMsgsPerSubject != 1 {
			n.log.Warn("a global table's stream keeps every record, not the latest of each key: a node's first start reads them all",
				"table", name, "messages", info.State.Msgs)
		}
		cfg := table.DefaultGlobalConfig()
		cfg.Name, cfg.Stream, cfg.JS = name, name, n.js
		cfg.Key = tableKey(info.Config)
		cfg.StoreDir = filepath.Join(n.cfg.DataDir, "tables", name)
		cfg.Cache, cfg.Metrics, cfg.Logger = n.cache, n.tableMetrics, n.log
		cfg.Check = checkValue
		cfg.Reject = n.rejectRecord(name)
		g, err := table.StartGlobal(ctx, cfg)
		if err != nil {
			return err
		}
		n.globals[name] = g
	}
	return nil
}

// stopGlobalTables stops the global tables; n.mu is held.
func (n *Node) stopGlobalTables() error {
	var errs []error
	for _, g := range n.globals {
		errs = append(errs, g.Stop())
	}
	n.globals = nil
	return errors.Join(errs...)
}

// globalsReady are the channels closed once the global tables bootstrapped.
func (n *Node) globalsReady() []<-chan struct{} {
	var ready []<-chan struct{}
	for _, name := range n.globalOrder {
		if g := n.globals[name]; g != nil {
			ready = append(ready, g.Ready())
		}
	}
	return ready
}

// tableKey returns how the key of a record is read on a stream of config
// cfg: as an input stream's (an eddy layout, from its metadata), or else
// as the last token of its subject (an output stream, <name>.<key>).
func tableKey(cfg jetstream.StreamConfig) func(string, nats.Header) (string, error) {
	in, ok := partition.InputOf(cfg)
	if !ok {
		return func(subject string, _ nats.Header) (string, error) {
			i := strings.LastIndexByte(subject, '.')
			if i < 0 {
				return "", fmt.Errorf("subject %q has no key token", subject)
			}
			return changelog.DecodeKey(subject[i+1:])
		}
	}
	return func(subject string, h nats.Header) (string, error) {
		// <name>.<p> or <name>.<p>.<key>
		rest := strings.TrimPrefix(subject, in.Type+".")
		ps, _, _ := strings.Cut(rest, ".")
		p, err := strconv.Atoi(ps)
		if err != nil || p < 0 || p >= in.Partitions {
			return "", fmt.Errorf("subject %q has no partition of %d", subject, in.Partitions)
		}
		return in.Key(p, subject, h)
	}
}

// checkValue refuses a value that Global.Get could not decode: neither
// msgpack nor JSON.
func checkValue(b []byte) error {
	if looksLikeJSON(b) && json.Valid(b) {
		return nil
	}
	var v msgpack.RawMessage
	if err := msgpack.Unmarshal(b, &v); err != nil || len(v) != len(b) {
		return fmt.Errorf("%w: a table value is msgpack or JSON", ErrMalformed)
	}
	return nil
}

// rejectRecord sends a record a table cannot take to the table's
// dead-letter stream, once however many nodes reject it (its message id).
func (n *Node) rejectRecord(name string) func(jetstream.Msg, error) {
	return func(msg jetstream.Msg, cause error) {
		md, _ := msg.Metadata()
		var seq uint64
		if md != nil {
			seq = md.Sequence.Stream
		}
		n.log.Error("table record to dead-letter stream", "table", name, "seq", seq, "subject", msg.Subject(), "err", cause)
		m := &nats.Msg{Subject: partition.DLQSubject(name), Data: msg.Data(), Header: nats.Header{}}
		m.Header.Set("Eddy-Error", cause.Error())
		m.Header.Set("Eddy-Table", name)
		m.Header.Set("Eddy-Offset", strconv.FormatUint(seq, 10))
		m.Header.Set("Eddy-Subject", msg.Subject())
		m.Header.Set(jetstream.MsgIDHeader, "table/"+name+"/"+strconv.FormatUint(seq, 10))
		ctx, cancel := context.WithTimeout(context.Background(), jsAPITimeout)
		defer cancel()
		if _, err := n.js.PublishMsg(ctx, m); err != nil {
			n.log.Warn("table record not sent to the dead-letter stream", "table", name, "seq", seq, "err", err)
		}
	}
}

// TableStatus is a global table's progress on this node.
type TableStatus struct {
	// Name is the table (and its stream).
	Name string `json:"name"`
	// Ready: caught up with the stream as it was when the node started.
	Ready bool `json:"ready"`
	// Applied is the last stream sequence the table applied.
	Applied uint64 `json:"applied"`
	// Lag is how many records of the stream it had not applied, as of its last batch.
	Lag uint64 `json:"lag"`
}

// Tables returns the progress of the node's global tables, by name.
func (n *Node) Tables() ([]TableStatus, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.running {
		return nil, ErrNotRunning
	}
	out := make([]TableStatus, 0, len(n.globalOrder))
	for _, name := range n.globalOrder {
		g := n.globals[name]
		if g == nil {
			continue
		}
		ready := false
		select {
		case <-g.Ready():
			ready = true
		default:
		}
		out = append(out, TableStatus{Name: name, Ready: ready, Applied: g.Applied(), Lag: g.Lag()})
	}
	return out, nil
}

// GlobalTableReader reads one global table from a handler.
type GlobalTableReader struct {
	c    *Context
	name string
	g    *table.Global
}

// Global returns the global table name (see GlobalTable). Reading a table
// the node did not register fails with ErrUnknownTable.
func (c *Context) Global(name string) GlobalTableReader {
	return GlobalTableReader{c: c, name: name, g: c.globals[name]}
}

// Get decodes the table's value of key into v (msgpack, or JSON) and
// reports whether there is one.
func (r GlobalTableReader) Get(key string, v any) (bool, error) {
	if r.g == nil {
		return false, fmt.Errorf("%w: %s", ErrUnknownTable, r.name)
	}
	b, err := r.g.Get(key)
	return decodeTableValue(r.name, key, b, err, v)
}

// WaitApplied waits until the table has applied its stream at least up to
// seq (a stream sequence, such as the one an event carries of the record it
// depends on), or the handler's context ends. A handler that reads the
// version of a record published before its event waits for it, so that
// its result does not depend on how far the table got when the event ran.
func (r GlobalTableReader) WaitApplied(seq uint64) error {
	if r.g == nil {
		return fmt.Errorf("%w: %s", ErrUnknownTable, r.name)
	}
	return r.g.WaitApplied(r.c.Context(), seq)
}

// Applied is the last sequence of its stream the table applied.
func (r GlobalTableReader) Applied() uint64 {
	if r.g == nil {
		return 0
	}
	return r.g.Applied()
}

// decodeValue decodes a table value: msgpack, else JSON.
func decodeValue(b []byte, v any) error {
	err := msgpack.Unmarshal(b, v)
	if err != nil && looksLikeJSON(b) {
		if jerr := json.Unmarshal(b, v); jerr == nil {
			return nil
		}
	}
	return err
}
