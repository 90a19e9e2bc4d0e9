package table

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/statestore"
)

// ErrNotReady means a global table has not caught up with its stream yet
// (its bootstrap runs), or stopped.
var ErrNotReady = errors.New("table: not caught up with its stream")

// GlobalConfig configures a global table.
type GlobalConfig struct {
	// Name names the table in logs and metrics.
	Name string
	// Stream is the source stream: every message is a record (see Record).
	Stream string
	// Key returns the key of a record from its subject and headers (the
	// stream's layout: partition.Input.Key, for a stream laid out like an
	// input stream).
	Key func(subject string, header nats.Header) (string, error)
	// JS reads the stream.
	JS jetstream.JetStream
	// StoreDir is the table's own local store, on this node.
	StoreDir string
	// Cache is the block cache of the node's stores (nil: the store's own).
	Cache *statestore.Cache
	// Batch is the most records applied to the local store in one batch.
	Batch int
	// ProgressEvery is how often a bootstrap logs its progress.
	ProgressEvery time.Duration
	// Check, if set, refuses a value the table's readers could not decode.
	Check func(value []byte) error
	// Reject receives a record the table cannot take (no key, or a value
	// Check refuses), which the table moves past; nil: logged only.
	Reject func(msg jetstream.Msg, err error)
	// Metrics records the table's metrics (nil: not recorded).
	Metrics *Metrics
	// Logger receives the table's logs.
	Logger *slog.Logger
}

// DefaultGlobalConfig returns the tuning defaults; the caller fills in Name,
// Stream, Key, JS and StoreDir.
func DefaultGlobalConfig() GlobalConfig {
	return GlobalConfig{
		Batch:         1000,            // a pebble batch costs ~ms; a thousand records amortise it
		ProgressEvery: 3 * time.Second, // as a partition's restore
	}
}

// Validate checks the config.
func (c *GlobalConfig) Validate() error {
	switch {
	case c.Name == "" || c.Stream == "":
		return errors.New("table: a global table needs a name and a stream")
	case c.Key == nil || c.JS == nil:
		return fmt.Errorf("table %s: no key function or no JetStream", c.Name)
	case c.StoreDir == "":
		return fmt.Errorf("table %s: no store dir", c.Name)
	case c.Batch < 1 || c.ProgressEvery <= 0:
		return fmt.Errorf("table %s: batch and progress interval must be positive", c.Name)
	}
	return nil
}

// A record of a table's stream is the latest value of its key: the
// message's data, or, for a message with the header TombstoneHeader (or
// NATS KV's KV-Operation: DEL or PURGE), the key's deletion.
const TombstoneHeader = "Eddy-Tombstone"

// Global is a global table: the whole of a stream materialized in a local
// store on this node, as the latest value of each key. It catches up with
// the stream as it was when it started (its bootstrap: Ready is closed
// then), and then tails it. Its position (the last stream sequence
// applied) is kept in the store with the values, so a restart reads only
// the records after it. A stream that was deleted and created again (its
// creation time differs from the one the store recorded) makes the table
// start over from an empty store.
//
// Reads are safe from any goroutine; the table's own goroutine applies
// records. Stop interrupts a bootstrap.
type Global struct {
	cfg   GlobalConfig
	log   *slog.Logger
	m     *globalMetrics
	store *statestore.Pebble

	applied atomic.Uint64 // the last stream sequence applied
	lag     atomic.Uint64 // records of the stream not applied yet, as of the last batch
	ready   chan struct{} // closed once bootstrapped
	advance chan struct{} // closed and replaced whenever applied moves (WaitApplied)
	mu      sync.Mutex    // guards advance

	cancel context.CancelFunc
	done   chan struct{}
}

// identityKey holds the creation time of the stream the store holds.
var identityKey = []byte("i/stream")

// valueKey is where the value of a table key is kept.
func valueKey(key string) []byte { return append([]byte("v/"), key...) }

// StartGlobal opens the table's store and starts bootstrapping it.
func StartGlobal(ctx context.Context, cfg GlobalConfig) (*Global, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("table", cfg.Name)
	st, err := cfg.JS.Stream(ctx, cfg.Stream)
	if err != nil {
		return nil, fmt.Errorf("table %s: stream %s: %w", cfg.Name, cfg.Stream, err)
	}
	identity := st.CachedInfo().Created.UTC().Format(time.RFC3339Nano)
	store, err := openGlobalStore(cfg, identity, log)
	if err != nil {
		return nil, err
	}
	meta, err := store.Meta()
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("table %s: %w", cfg.Name, err)
	}
	g := &Global{cfg: cfg, log: log, m: cfg.Metrics.forTable(cfg.Name), store: store,
		ready: make(chan struct{}), advance: make(chan struct{}), done: make(chan struct{})}
	g.applied.Store(meta.Offset)
	g.m.applied.Set(float64(meta.Offset))
	tctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	go func() {
		defer close(g.done)
		g.run(tctx, st)
	}()
	return g, nil
}

// openGlobalStore opens the table's store, or a new one where the store
// holds another incarnation of the stream.
func openGlobalStore(cfg GlobalConfig, identity string, log *slog.Logger) (*statestore.Pebble, error) {
	open := func() (*statestore.Pebble, error) {
		return statestore.OpenPebble(statestore.Config{Dir: cfg.StoreDir, Cache: cfg.Cache})
	}
	store, err := open()
	if err != nil {
		return nil, fmt.Errorf("table %s: open store: %w", cfg.Name, err)
	}
	held, err := store.Get(identityKey)
	switch {
	case errors.Is(err, statestore.ErrNotFound):
		b := store.NewBatch()
		b.Set(identityKey, []byte(identity))
		err = b.Commit()
		b.Close()
		if err != nil {
			store.Close()
			return nil, fmt.Errorf("table %s: %w", cfg.Name, err)
		}
		return store, nil
	case err != nil:
		store.Close()
		return nil, fmt.Errorf("table %s: %w", cfg.Name, err)
	case string(held) == identity:
		return store, nil
	}
	log.Warn("the table's stream was created again: starting over from an empty store",
		"stream", cfg.Stream, "held", string(held), "now", identity)
	if err := store.Close(); err != nil {
		return nil, err
	}
	if err := os.RemoveAll(cfg.StoreDir); err != nil {
		return nil, fmt.Errorf("table %s: remove store: %w", cfg.Name, err)
	}
	return openGlobalStore(cfg, identity, log)
}

// run bootstraps the table, then tails the stream until ctx ends. A
// failure to read (NATS away, the consumer lost with its server) is
// retried without end, from the last sequence applied.
func (g *Global) run(ctx context.Context, st jetstream.Stream) {
	var info *jetstream.StreamInfo
	wait := retryMinBackoff
	for {
		var err error
		if info, err = st.Info(ctx); err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		g.log.Warn("global table: stream info; retrying", "err", err)
		if !sleep(ctx, &wait) {
			return
		}
	}
	for {
		err := g.checkAhead(info.State.LastSeq)
		if err == nil {
			break
		}
		g.log.Warn("global table: clearing the store; retrying", "err", err)
		if !sleep(ctx, &wait) {
			return
		}
	}
	b := &bootstrap{target: info.State.LastSeq, start: time.Now(), lastLog: time.Now()}
	from := g.applied.Load() + 1
	if b.target < from {
		g.bootstrapped(b)
	} else {
		b.total = b.target - from + 1
		if info.State.FirstSeq > from {
			b.total = min(info.State.Msgs, b.target-info.State.FirstSeq+1)
		}
		g.log.Info("global table bootstrapping", "stream", g.cfg.Stream, "from", from, "to", b.target, "records", b.total)
	}
	wait = retryMinBackoff
	for {
		before := g.applied.Load()
		err := g.tail(ctx, st, b)
		if ctx.Err() != nil {
			return
		}
		if g.applied.Load() > before {
			wait = retryMinBackoff // it read for a while: a new fault
		}
		g.log.Warn("global table: reading the stream failed; reading again from the last sequence applied", "err", err, "applied", g.applied.Load())
		if !sleep(ctx, &wait) {
			return
		}
	}
}

// bootstrap is a bootstrap's progress: up to target, total records.
type bootstrap struct {
	target, total, read uint64
	start, lastLog      time.Time
}

// Retries of reading the stream: from retryMinBackoff, doubling, to
// retryMaxBackoff, so that a table reads again within a second of NATS
// coming back.
const (
	retryMinBackoff = 20 * time.Millisecond
	retryMaxBackoff = time.Second
)

// sleep waits *wait (then doubles it, up to retryMaxBackoff); false if ctx
// ends first.
func sleep(ctx context.Context, wait *time.Duration) bool {
	t := time.NewTimer(*wait)
	defer t.Stop()
	*wait = min(2**wait, retryMaxBackoff)
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// tail reads the stream from the last sequence applied until ctx ends or
// reading fails.
func (g *Global) tail(ctx context.Context, st jetstream.Stream, boot *bootstrap) error {
	info, err := st.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream info: %w", err)
	}
	if err := g.checkAhead(info.State.LastSeq); err != nil {
		return err
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cons, err := st.OrderedConsumer(cctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       g.applied.Load() + 1,
		InactiveThreshold: changelog.ConsumerInactiveThreshold,
	})
	if err != nil {
		return fmt.Errorf("consumer: %w", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(2*g.cfg.Batch), jetstream.PullHeartbeat(changelog.ConsumerHeartbeat))
	if err != nil {
		return fmt.Errorf("consume: %w", err)
	}
	defer it.Stop()
	b := g.store.NewBatch()
	defer func() { b.Close() }()
	n := 0
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return fmt.Errorf("read stream: %w", err)
		}
		md, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("metadata: %w", err)
		}
		seq := md.Sequence.Stream
		if seq <= g.applied.Load() {
			continue // a redelivery after a consumer was recreated
		}
		g.apply(b, msg)
		n++
		boot.read++
		if md.NumPending > 0 && n < g.cfg.Batch {
			continue
		}
		b.SetMeta(statestore.Meta{Offset: seq})
		if err := b.Commit(); err != nil {
			return fmt.Errorf("apply: %w", err)
		}
		b.Close()
		b = g.store.NewBatch()
		g.m.records.Add(float64(n))
		n = 0
		g.moved(seq, md.NumPending)
		if g.isReady() {
			continue
		}
		if seq >= boot.target || md.NumPending == 0 {
			g.bootstrapped(boot)
		} else if time.Since(boot.lastLog) >= g.cfg.ProgressEvery {
			boot.lastLog = time.Now()
			p := changelog.Progress{Done: boot.read, Total: boot.total, Elapsed: time.Since(boot.start)}
			p.Rate = float64(boot.read) / max(p.Elapsed.Seconds(), 1e-9)
			if p.Rate > 0 && boot.total > boot.read {
				p.ETA = time.Duration(float64(boot.total-boot.read) / p.Rate * float64(time.Second))
			}
			g.m.bootstrap.Set(p.Percent() / 100)
			g.log.Info("global table bootstrap", "records", boot.read, "of", boot.total, "percent", fmt.Sprintf("%.1f", p.Percent()),
				"rate", fmt.Sprintf("%.0f/s", p.Rate), "eta", p.ETA.Round(time.Second))
		}
	}
}

// checkAhead starts the table over if its stream ends at last, before what
// the table applied: the stream lost records the table applied (a server
// that crashed before it synced them), and what the table holds past the
// stream's end may not be there any more.
func (g *Global) checkAhead(last uint64) error {
	if last >= g.applied.Load() {
		return nil
	}
	g.log.Warn("the table's stream ends before what the table applied: starting over from an empty store",
		"stream_last", last, "applied", g.applied.Load())
	return g.clear()
}

// clear deletes every value and the table's position.
func (g *Global) clear() error {
	b := g.store.NewBatch()
	defer b.Close()
	err := g.store.Iterate([]byte("v/"), func(k, _ []byte) error {
		b.Delete(k)
		return nil
	})
	if err != nil {
		return fmt.Errorf("clear: %w", err)
	}
	b.SetMeta(statestore.Meta{})
	if err := b.Commit(); err != nil {
		return fmt.Errorf("clear: %w", err)
	}
	g.applied.Store(0)
	g.m.applied.Set(0)
	return nil
}

// apply adds the record msg to b.
func (g *Global) apply(b statestore.Batch, msg jetstream.Msg) {
	key, err := g.cfg.Key(msg.Subject(), msg.Headers())
	if err == nil && key == "" {
		err = errors.New("empty key")
	}
	tombstone := isTombstone(msg.Headers())
	if err == nil && !tombstone && g.cfg.Check != nil {
		err = g.cfg.Check(msg.Data())
	}
	if err != nil {
		g.m.rejected.Inc()
		if g.cfg.Reject != nil {
			g.cfg.Reject(msg, err)
		} else {
			g.log.Warn("record skipped", "subject", msg.Subject(), "err", err)
		}
		return
	}
	if tombstone {
		b.Delete(valueKey(key))
		return
	}
	b.Set(valueKey(key), msg.Data())
}

func isTombstone(h nats.Header) bool {
	if h == nil {
		return false
	}
	if _, ok := h[TombstoneHeader]; ok {
		return true
	}
	switch h.Get("KV-Operation") {
	case "DEL", "PURGE":
		return true
	}
	return false
}

// moved publishes a new applied sequence and lag.
func (g *Global) moved(seq, pending uint64) {
	g.applied.Store(seq)
	g.lag.Store(pending)
	g.m.applied.Set(float64(seq))
	g.m.lag.Set(float64(pending))
	g.mu.Lock()
	close(g.advance)
	g.advance = make(chan struct{})
	g.mu.Unlock()
}

func (g *Global) bootstrapped(b *bootstrap) {
	g.m.bootstrap.Set(1)
	if b.read > 0 {
		el := time.Since(b.start)
		g.log.Info("global table bootstrapped", "records", b.read, "of", b.total, "took", el.Round(time.Millisecond),
			"rate", fmt.Sprintf("%.0f/s", float64(b.read)/max(el.Seconds(), 1e-9)), "applied", g.applied.Load())
	}
	close(g.ready)
}

func (g *Global) isReady() bool {
	select {
	case <-g.ready:
		return true
	default:
		return false
	}
}

// Ready is closed once the table has caught up with its stream as it was
// at start.
func (g *Global) Ready() <-chan struct{} { return g.ready }

// Done is closed once the table stopped (Stop). Until then it reads its
// stream, and a failure to read (NATS away) is retried without end.
func (g *Global) Done() <-chan struct{} { return g.done }

// Applied is the last stream sequence the table applied.
func (g *Global) Applied() uint64 { return g.applied.Load() }

// Lag is how many records of the stream the table had not applied, as of
// its last batch.
func (g *Global) Lag() uint64 { return g.lag.Load() }

// Get returns the value of key, statestore.ErrNotFound if the table has
// none, or ErrNotReady before its bootstrap ends.
func (g *Global) Get(key string) ([]byte, error) {
	if !g.isReady() {
		return nil, fmt.Errorf("%w: %s", ErrNotReady, g.cfg.Name)
	}
	return g.store.Get(valueKey(key))
}

// WaitApplied waits until the table has applied the stream at least up to
// seq, or ctx ends, or the table stops.
func (g *Global) WaitApplied(ctx context.Context, seq uint64) error {
	for {
		g.mu.Lock()
		advance := g.advance
		g.mu.Unlock()
		if g.applied.Load() >= seq {
			return nil
		}
		select {
		case <-advance:
		case <-g.done:
			return fmt.Errorf("%w: %s stopped at %d, before %d", ErrNotReady, g.cfg.Name, g.applied.Load(), seq)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Stop stops the table (a bootstrap too) and closes its store.
func (g *Global) Stop() error {
	g.cancel()
	<-g.done
	return g.store.Close()
}
