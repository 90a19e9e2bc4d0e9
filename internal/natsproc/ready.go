package natsproc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// readyPoll is how often WaitReady and WaitMetaLeader look again: a new
// 3-server cluster is ready 0.2-6 s after its servers listen, and a lost
// meta leader is replaced in 4-9 s, so 100 ms adds little and costs little.
const readyPoll = 100 * time.Millisecond

// probeTimeout bounds one probe of one server (an HTTP request or a JetStream
// API request): well above a healthy answer's milliseconds, well below the
// waits it is part of.
const probeTimeout = 3 * time.Second

// WaitReady waits until every running server, paused ones aside, is ready:
//
//  1. its /healthz answers 200, which on v2.15 means it accepts client
//     connections, JetStream is enabled, it knows a meta leader and is
//     current with it, and every stream and consumer replica it hosts has
//     recovered and caught up (so after a restart this waits for catch-up);
//  2. a client connected to it alone gets a JetStream account-info answer,
//     which only the meta leader gives. This step is what makes WaitReady
//     right after the meta leader is killed: the followers' /healthz says
//     200 for about a second more, naming the dead leader, while account
//     info goes unanswered until they elect another (4-9 s).
//
// Servers not running are not waited for, but at least one must run (so a
// WaitReady begun before StartAll waits for it): with one of three down it
// returns once the other two are ready; with two of three down it waits
// until ctx ends, since no meta leader can be elected. A server that exited without
// Kill or Stop fails it at once with ErrExited and the server's log tail.
// Otherwise it returns ctx's error with what the last probe saw.
func (c *Cluster) WaitReady(ctx context.Context) error {
	hc := &http.Client{Timeout: probeTimeout}
	defer hc.CloseIdleConnections()
	for {
		err := c.probeReady(ctx, hc)
		if err == nil || errors.Is(err, ErrExited) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait ready: %w; last: %w", ctx.Err(), err)
		case <-time.After(readyPoll):
		}
	}
}

// probeReady checks every live server once, returning the first failure.
func (c *Cluster) probeReady(ctx context.Context, hc *http.Client) error {
	probed := 0
	for i, s := range c.servers {
		s.mu.Lock()
		crash, live := s.crashErr(), s.running() && !s.paused
		s.mu.Unlock()
		if crash != nil {
			return fmt.Errorf("%w\n%s", crash, c.tail(s, 4096))
		}
		if !live {
			continue
		}
		if err := c.healthz(ctx, hc, i); err != nil {
			return err
		}
		if err := c.jetStreamAnswers(ctx, i); err != nil {
			return err
		}
		probed++
	}
	if probed == 0 {
		return errors.New("no server is running")
	}
	return nil
}

// healthz asks server i's /healthz (all checks: JetStream, meta leader, the
// replicas it hosts) and returns nil for 200 OK, else what it said.
func (c *Cluster) healthz(ctx context.Context, hc *http.Client, i int) error {
	var h struct {
		Status string `json:"status"`
		Error  string `json:"error"`
	}
	code, err := getJSON(ctx, hc, c.MonitorURL(i)+"/healthz", &h)
	if err != nil {
		return fmt.Errorf("%s healthz: %w", c.Name(i), err)
	}
	if code != http.StatusOK {
		return fmt.Errorf("%s healthz %d %s: %s", c.Name(i), code, h.Status, h.Error)
	}
	return nil
}

// jetStreamAnswers connects a client to server i alone and asks for the
// account's JetStream info.
func (c *Cluster) jetStreamAnswers(ctx context.Context, i int) error {
	nc, err := nats.Connect(c.URL(i), nats.NoReconnect(), nats.Timeout(probeTimeout),
		nats.Name("natsproc readiness probe"))
	if err != nil {
		return fmt.Errorf("%s connect: %w", c.Name(i), err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("%s jetstream: %w", c.Name(i), err)
	}
	actx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	if _, err := js.AccountInfo(actx); err != nil {
		return fmt.Errorf("%s JetStream account info: %w", c.Name(i), err)
	}
	return nil
}

// MetaLeader returns the name of the JetStream meta leader: the running,
// unpaused server whose /jsz?leader-only=true says it leads. It does not
// wait: with none it fails with ErrNoLeader. It asks the leader itself since
// the followers' /jsz keeps naming a killed leader until they elect another,
// 4-9 s later (the Raft election timeout). A single server is its own meta
// leader.
func (c *Cluster) MetaLeader(ctx context.Context) (string, error) {
	if len(c.servers) == 1 {
		return c.Name(0), nil
	}
	hc := &http.Client{Timeout: probeTimeout}
	defer hc.CloseIdleConnections()
	errs := []error{ErrNoLeader}
	for i, s := range c.servers {
		s.mu.Lock()
		live := s.running() && !s.paused
		s.mu.Unlock()
		if !live {
			continue
		}
		// A follower answers 400 "not leader".
		code, _, err := get(ctx, hc, c.MonitorURL(i)+"/jsz?leader-only=true")
		if err != nil {
			errs = append(errs, fmt.Errorf("%s jsz: %w", c.Name(i), err))
			continue
		}
		if code == http.StatusOK {
			return c.Name(i), nil
		}
	}
	return "", errors.Join(errs...)
}

// WaitMetaLeader waits until a server other than not (any, if not is "")
// leads the meta group, as MetaLeader sees it, and returns its name. After
// the meta leader is killed that takes one Raft election timeout, 4-9 s.
func (c *Cluster) WaitMetaLeader(ctx context.Context, not string) (string, error) {
	for {
		leader, err := c.MetaLeader(ctx)
		if err == nil && leader != not {
			return leader, nil
		}
		if err == nil {
			err = fmt.Errorf("meta group still led by %s", leader)
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("wait for a meta leader: %w; last: %w", ctx.Err(), err)
		case <-time.After(readyPoll):
		}
	}
}

// get GETs url and returns its status and (up to 1 MiB of) its body.
func get(ctx context.Context, hc *http.Client, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, body, err
}

// getJSON GETs url and decodes its JSON body into v, returning the status.
func getJSON(ctx context.Context, hc *http.Client, url string, v any) (int, error) {
	code, body, err := get(ctx, hc, url)
	if err != nil {
		return code, err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return code, fmt.Errorf("status %d, body %.200q: %w", code, body, err)
	}
	return code, nil
}
