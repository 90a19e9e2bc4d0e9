package eddy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/internal/streams"
)

// outboxInFlight is how many outbox forwards a node keeps in flight: a
// few full batches of every partition (MaxBatchRecords each).
const outboxInFlight = 64 << 10

// connect connects to NATS, starting the embedded server if no URL is set,
// waits for JetStream and makes the input, dead-letter and output streams
// exist. It waits through NATS and JetStream not being up yet, within
// Config.NATSWait and ctx.
func (n *Node) connect(ctx context.Context) error {
	if err := os.MkdirAll(n.cfg.DataDir, 0o755); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	url := n.cfg.NATSURL
	if url == "" {
		var err error
		if url, err = n.startEmbeddedNATS(); err != nil {
			return err
		}
	}
	opts := append([]nats.Option{
		nats.Name("eddy " + n.cfg.NodeID),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(100 * time.Millisecond),
		// Fail publishes while disconnected instead of buffering them: a commit
		// must know whether it reached the server.
		nats.ReconnectBufSize(-1),
		// A server cut off by the network sends no reset: without pings the
		// connection looks alive for minutes (nats.go's default: a ping every
		// 2 min) while no commit gets through. A ping every 500 ms, and the
		// connection is given up after 3 unanswered, so the node moves to
		// another server of the URL list, or tells the cluster it lost NATS
		// (watchDataPlane), within about 2 s. Pings are a few bytes.
		nats.PingInterval(500 * time.Millisecond),
		nats.MaxPingsOutstanding(3),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: the node closed the connection itself
				n.log.Warn("NATS disconnected; partitions retry until it is back", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { n.log.Info("NATS reconnected", "url", c.ConnectedUrl()) }),
	}, n.cfg.NATSOptions...)
	w, ctx, cancel := n.natsWait(ctx, url)
	defer cancel()
	nc, err := w.connect(ctx, url, opts)
	if err != nil {
		return err
	}
	// Partitions forward their outboxes with async publishes on this
	// context, all at once: nats.go's default of 4000 in flight stalled a
	// node's forwards at saturation (16 partitions of 600-entry batches),
	// and a stalled forward is retried whole after a backoff.
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(jsAPITimeout), jetstream.WithPublishAsyncMaxPending(outboxInFlight))
	if err != nil {
		nc.Close()
		return err
	}
	client, err := NewClient(nc)
	if err != nil {
		nc.Close()
		return err
	}
	n.mu.Lock()
	n.nc, n.js, n.client = nc, js, client
	n.mu.Unlock()
	if err := w.awaitJetStream(ctx, nc, js); err != nil {
		return err
	}
	if err := n.ensureStreams(ctx, w, nc, js); err != nil {
		return err
	}
	n.mu.Lock()
	n.stopJSProbe = n.probeJetStream(nc, js)
	n.mu.Unlock()
	return n.serveTypes(nc)
}

func (n *Node) startEmbeddedNATS() (string, error) {
	opts := &server.Options{
		ServerName: "eddy-" + n.cfg.NodeID,
		Host:       n.cfg.EmbeddedNATSHost,
		Port:       n.cfg.EmbeddedNATSPort,
		JetStream:  true,
		StoreDir:   filepath.Join(n.cfg.DataDir, "nats"),
		NoSigs:     true,
		NoLog:      true,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return "", fmt.Errorf("embedded NATS: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return "", fmt.Errorf("embedded NATS did not start on %s:%d", opts.Host, opts.Port)
	}
	n.srv = srv
	n.log.Info("embedded NATS server started", "url", srv.ClientURL(), "store", opts.StoreDir)
	return srv.ClientURL(), nil
}

// redactURL hides a password in a NATS URL (or a comma-separated list of them).
func redactURL(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			parts[i] = u.Redacted()
		}
	}
	return strings.Join(parts, ",")
}

// How a node waits for NATS at start.
const (
	// A refused connection costs nothing: try again soon, so that NATS
	// started a moment after the node is used at once.
	natsRetryMin = 100 * time.Millisecond
	// NATS, or a JetStream leader, that comes up is noticed within a second.
	natsRetryMax = time.Second
	// One readable line every few seconds while waiting, not one per attempt.
	natsLogEvery = 5 * time.Second
	// A JetStream cluster without a meta leader does not answer at all for
	// its first 10 s (nats-server v2.15.2); a live one answers in milliseconds.
	jsProbeTimeout = time.Second
	// Creating an R3 stream takes ~70 ms here once the cluster answers; a
	// request the cluster left unanswered (its first seconds) is sent again
	// after this, not after jetstream's 5 s default.
	streamOpTimeout = 2 * time.Second
	// jsAPITimeout bounds the node's JetStream API requests whose context
	// has no deadline (stream and consumer lookups of partition actors and
	// hot replicas): they take milliseconds; one left unanswered is retried
	// (the actor restarts) after this, not after jetstream's 5 s default.
	jsAPITimeout = 2 * time.Second
)

// errNATSWaitPassed is the cause of a natsWait's context ending because
// Config.NATSWait passed.
var errNATSWaitPassed = errors.New("Config.NATSWait passed")

// natsWait is the node's wait for NATS at start: it runs each step (connect,
// JetStream answers, each stream exists) until it succeeds, fails for good,
// or the wait's context ends, and logs where it stands every natsLogEvery.
type natsWait struct {
	log   *slog.Logger
	url   string // redacted
	limit time.Duration
	start time.Time
}

// natsWait returns the wait for url and its context, bounded by
// Config.NATSWait (when set) and by ctx.
func (n *Node) natsWait(ctx context.Context, url string) (*natsWait, context.Context, context.CancelFunc) {
	w := &natsWait{log: n.log, url: redactURL(url), limit: n.cfg.NATSWait, start: time.Now()}
	if w.limit > 0 {
		ctx, cancel := context.WithTimeoutCause(ctx, w.limit, errNATSWaitPassed)
		return w, ctx, cancel
	}
	ctx, cancel := context.WithCancel(ctx)
	return w, ctx, cancel
}

// step is one thing the node waits for.
type step struct {
	waitFor string // "NATS to accept the connection": logs and ErrNATSUnavailable
	action  string // "connect to NATS": a fatal error's prefix, with the URLs; "": none
	// timeout bounds one attempt; 0: op bounds itself.
	timeout time.Duration
	// op makes one attempt.
	op func(ctx context.Context) error
	// fatal tells an error no retry can cure, with a hint for the operator
	// ("" when the error says enough).
	fatal func(err error) (hint string, ok bool)
}

// run runs s until it succeeds, fails with an error s.fatal calls fatal
// (returned at once), or ctx ends (ErrNATSUnavailable, with the last error).
func (w *natsWait) run(ctx context.Context, s step) error {
	var (
		lastErr  error
		attempts int
		logged   time.Time
		pause    = natsRetryMin
	)
	for {
		attempts++
		actx, cancel := ctx, context.CancelFunc(func() {})
		if s.timeout > 0 {
			actx, cancel = context.WithTimeout(ctx, s.timeout)
		}
		err := s.op(actx)
		cancel()
		if err == nil {
			if lastErr != nil {
				w.log.Info("done waiting for "+s.waitFor, "url", w.url, "waited", since(w.start), "attempts", attempts)
			}
			return nil
		}
		if ctx.Err() != nil {
			// An attempt cut short by the end of the wait says nothing new.
			if lastErr == nil {
				lastErr = err
			}
			return w.gaveUp(ctx, s, lastErr)
		}
		if s.timeout > 0 && errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("no answer within %v: %w", s.timeout, err)
		}
		if hint, ok := s.fatal(err); ok {
			if hint != "" {
				err = fmt.Errorf("%w (%s; not retried)", err, hint)
			}
			if s.action != "" {
				err = fmt.Errorf("%s at %s: %w", s.action, w.url, err)
			}
			return err
		}
		lastErr = err
		if time.Since(logged) >= natsLogEvery {
			logged = time.Now()
			attrs := []any{"url", w.url, "waited", since(w.start), "attempts", attempts, "err", lastErr.Error()}
			if w.limit > 0 {
				attrs = append(attrs, "gives_up_after", w.limit)
			}
			w.log.Warn("waiting for "+s.waitFor, attrs...)
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return w.gaveUp(ctx, s, lastErr)
		case <-t.C:
		}
		pause = min(2*pause, natsRetryMax)
	}
}

func (w *natsWait) gaveUp(ctx context.Context, s step, lastErr error) error {
	return fmt.Errorf("%w: %s at %s: waited %v (%v); last error: %w",
		ErrNATSUnavailable, s.waitFor, w.url, since(w.start), context.Cause(ctx), lastErr)
}

func since(t time.Time) time.Duration { return time.Since(t).Round(time.Millisecond) }

// connect connects to url (a comma-separated list: nats.go tries each
// server), retrying while no server accepts the connection. Wrong
// credentials, a TLS mismatch and unreadable credential or certificate files
// fail at once.
func (w *natsWait) connect(ctx context.Context, url string, opts []nats.Option) (*nats.Conn, error) {
	var nc *nats.Conn
	err := w.run(ctx, step{
		waitFor: "NATS to accept the connection",
		action:  "connect to NATS",
		op: func(context.Context) (err error) {
			nc, err = nats.Connect(url, opts...)
			return err
		},
		fatal: connectFatal,
	})
	return nc, err
}

// connectFatal tells the connect errors that retrying cannot cure.
// nats.go v1.55.0 returns:
//   - refused connections on every server: nats.ErrNoServers (retried);
//   - an unknown host name: a *net.OpError (retried: compose and Kubernetes
//     add the name when the NATS container starts);
//   - a wrong user, password or token: "nats: Authorization Violation"
//     (nats.ErrAuthorization), within a millisecond on loopback;
//   - TLS wanted by the client only: nats.ErrSecureConnWanted; an unknown
//     server certificate: a *tls.CertificateVerificationError;
//   - a missing creds or CA file: an error wrapping *fs.PathError.
//
// Of a URL list, nats.go reports the last server's error, and a refused
// connection counts as none: with one server refusing the credentials and
// the others down, an attempt may end in ErrNoServers. nats.go shuffles the
// list on each attempt, so a later one ends with the authorization error.
func connectFatal(err error) (string, bool) {
	var (
		verify  *tls.CertificateVerificationError
		alert   tls.AlertError
		record  tls.RecordHeaderError
		unknown x509.UnknownAuthorityError
		host    x509.HostnameError
		invalid x509.CertificateInvalidError
		path    *fs.PathError
		badURL  *url.Error
	)
	switch {
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAuthRevoked):
		return "NATS refused the credentials: check the user, password, token or creds file", true
	case errors.Is(err, nats.ErrSecureConnWanted), errors.Is(err, nats.ErrSecureConnRequired),
		errors.Is(err, nats.ErrClientCertOrRootCAsRequired),
		errors.As(err, &verify), errors.As(err, &alert), errors.As(err, &record),
		errors.As(err, &unknown), errors.As(err, &host), errors.As(err, &invalid):
		return "TLS does not match the server's: check the CA, certificate and key", true
	case errors.As(err, &path):
		return "a credentials or certificate file cannot be read", true
	case errors.As(err, &badURL):
		return "check the NATS URL", true
	}
	return "", false
}

// awaitJetStream waits until JetStream answers on nc. A JetStream cluster
// that has not elected its meta leader does not answer for its first 10 s,
// then answers 10008 "JetStream system temporarily unavailable"; both are
// retried. A server without JetStream, or an account without it, fails at
// once.
func (w *natsWait) awaitJetStream(ctx context.Context, nc *nats.Conn, js jetstream.JetStream) error {
	return w.run(ctx, step{
		waitFor: "JetStream to answer",
		action:  "JetStream",
		timeout: jsProbeTimeout,
		op: func(ctx context.Context) error {
			_, err := js.AccountInfo(ctx)
			return err
		},
		fatal: func(err error) (string, bool) {
			switch {
			case errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
				return "the NATS account has no JetStream", true
			case errors.Is(err, jetstream.ErrJetStreamNotEnabled):
				return "the NATS server runs without JetStream: start it with -js", true
			}
			return jsFatal(nc, err)
		},
	})
}

// jsFatal tells a JetStream API error that retrying cannot cure: all but
// streams.Transient, and a request that timed out because the server
// denied the permission to send it (it says so only asynchronously).
func jsFatal(nc *nats.Conn, err error) (string, bool) {
	if last := nc.LastError(); errors.Is(last, nats.ErrPermissionViolation) {
		return "the NATS user may not use the JetStream API: " + last.Error(), true
	}
	return "", !streams.Transient(err)
}
