package natsproc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Sentinel errors of the stream helpers.
var (
	// ErrNoLeader: the stream (or the meta group) has no leader right now, as
	// during an election or with its quorum lost.
	ErrNoLeader = errors.New("natsproc: no leader")
	// ErrNotReplicated: the stream has no replica besides its leader (R1, or
	// any stream of a standalone server), so no other server can lead it.
	ErrNotReplicated = errors.New("natsproc: stream has no other replica")
	// ErrNotReplica: the server named to lead a stream holds no replica of it.
	ErrNotReplica = errors.New("natsproc: server is not a replica of the stream")
)

// leaderPoll is how often the stream helpers ask again. A step-down elects
// the next leader in about 50 ms here, so this resolves it finely.
const leaderPoll = 50 * time.Millisecond

// askTimeout bounds one stream info request of the waiting helpers. Only the
// leader answers, in milliseconds; a request that reaches the stream during
// a hand-over can go unanswered, so it is given up soon and asked again.
const askTimeout = time.Second

// StreamLeader returns the name of the server leading stream (its
// StreamInfo.Cluster.Leader; a standalone server leads all its streams). It
// does not wait: with no leader it fails with ErrNoLeader, and while the
// stream's group is leaderless the info request itself may time out, since
// only a leader answers it. The request is bounded by ctx and by 3 s.
func StreamLeader(ctx context.Context, js jetstream.JetStream, stream string) (string, error) {
	ci, err := streamCluster(ctx, js, stream, probeTimeout)
	if err != nil {
		return "", err
	}
	return ci.Leader, nil
}

// streamCluster asks for stream's info, waiting at most timeout, and returns
// its cluster part, failing with ErrNoLeader if it names no leader.
func streamCluster(ctx context.Context, js jetstream.JetStream, stream string, timeout time.Duration) (*jetstream.ClusterInfo, error) {
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	s, err := js.Stream(rctx, stream)
	if err != nil {
		return nil, fmt.Errorf("stream %s info: %w", stream, err)
	}
	ci := s.CachedInfo().Cluster
	if ci == nil || ci.Leader == "" {
		return nil, fmt.Errorf("stream %s: %w", stream, ErrNoLeader)
	}
	return ci, nil
}

// WaitStreamLeader waits until stream has a leader other than not (any
// leader if not is "") and returns its name, asking every 50 ms. Failed asks
// (no leader, no answer within 1 s during an election or hand-over) are
// retried until ctx ends; then the last failure is returned with ctx's
// error.
func WaitStreamLeader(ctx context.Context, js jetstream.JetStream, stream, not string) (string, error) {
	ci, err := waitStreamCluster(ctx, js, stream, func(ci *jetstream.ClusterInfo) error {
		if ci.Leader == not {
			return fmt.Errorf("stream %s still led by %s", stream, not)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	return ci.Leader, nil
}

// waitStreamCluster asks for stream's cluster info every 50 ms, each ask
// bounded by askTimeout, until it has a leader and ok accepts it, or ctx
// ends. An ok error wrapping ErrNotReplica ends it at once.
func waitStreamCluster(ctx context.Context, js jetstream.JetStream, stream string, ok func(*jetstream.ClusterInfo) error) (*jetstream.ClusterInfo, error) {
	for {
		ci, err := streamCluster(ctx, js, stream, askTimeout)
		if err == nil {
			if err = ok(ci); err == nil {
				return ci, nil
			}
		}
		if errors.Is(err, ErrNotReplica) {
			return nil, err
		}
		if serr := sleepCtx(ctx, leaderPoll); serr != nil {
			return nil, fmt.Errorf("wait for stream %s: %w; last: %w", stream, serr, err)
		}
	}
}

// StepDownStream asks the leader of a replicated stream to step down
// ($JS.API.STREAM.LEADER.STEPDOWN.<stream>) and waits until another server
// leads it, returning that server's name. The leader hands over to a peer
// that is up to date, in about 50 ms here; clients publishing meanwhile saw
// stalls of at most tens of ms and no errors, but a stream info request
// made during the hand-over may go unanswered (so this can take a second
// more). It fails with ErrNotReplicated for an
// R1 stream (which the server would report as stepped down, with nothing
// changed) and a standalone server's. nc uses the default JetStream API
// prefix.
func StepDownStream(ctx context.Context, nc *nats.Conn, stream string) (string, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return "", err
	}
	ci, err := waitStreamCluster(ctx, js, stream, func(*jetstream.ClusterInfo) error { return nil })
	if err != nil {
		return "", fmt.Errorf("step down %s: %w", stream, err)
	}
	if len(ci.Replicas) == 0 {
		return "", fmt.Errorf("step down %s (led by %s): %w", stream, ci.Leader, ErrNotReplicated)
	}
	if err := requestStepDown(ctx, nc, stream, ""); err != nil {
		return "", fmt.Errorf("step down %s (led by %s): %w", stream, ci.Leader, err)
	}
	leader, err := WaitStreamLeader(ctx, js, stream, ci.Leader)
	if err != nil {
		return "", fmt.Errorf("step down %s (led by %s): %w", stream, ci.Leader, err)
	}
	return leader, nil
}

// MoveStreamLeader makes server to (a name such as "n2") the leader of a
// replicated stream by a step-down that prefers it, and returns once to leads
// (at once if it already does). A leader hands over only to a peer that the
// meta layer counts online and that it heard from in the last 3 s, else it
// picks another; shortly after to restarted that is not yet so, even when
// WaitReady has returned. So MoveStreamLeader first waits, asking every
// 50 ms, until the leader reports to as online, current and heard from
// within 2 s, and tries again if the step-down elected another server
// anyway. It fails at once with ErrNotReplica if to holds no replica of the
// stream, else with ctx's error and the last obstacle.
func MoveStreamLeader(ctx context.Context, nc *nats.Conn, stream, to string) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	_, err = waitStreamCluster(ctx, js, stream, func(ci *jetstream.ClusterInfo) error {
		if ci.Leader == to {
			return nil
		}
		i := slices.IndexFunc(ci.Replicas, func(p *jetstream.PeerInfo) bool { return p.Name == to })
		if i < 0 {
			return fmt.Errorf("%s: %w (leader %s)", to, ErrNotReplica, ci.Leader)
		}
		// The leader's own check is: online, and heard from within 3
		// heartbeats of 1 s; 2 s leaves a margin for the request's way.
		if r := ci.Replicas[i]; r.Offline || !r.Current || r.Active > 2*time.Second {
			return fmt.Errorf("%s not ready to lead: offline %v, current %v, last seen %v ago",
				to, r.Offline, r.Current, r.Active)
		}
		if err := requestStepDown(ctx, nc, stream, to); err != nil {
			return err
		}
		// Not done until the next ask sees to leading.
		return fmt.Errorf("asked %s to hand over to %s", ci.Leader, to)
	})
	if err != nil {
		return fmt.Errorf("move leader of stream %s to %s: %w", stream, to, err)
	}
	return nil
}

// requestStepDown sends the step-down request for stream, preferring server
// preferred as the next leader if it is not "", and returns the error the
// leader answers with.
func requestStepDown(ctx context.Context, nc *nats.Conn, stream, preferred string) error {
	var body []byte
	if preferred != "" {
		body, _ = json.Marshal(map[string]any{"placement": map[string]string{"preferred": preferred}})
	}
	rctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	msg, err := nc.RequestWithContext(rctx, "$JS.API.STREAM.LEADER.STEPDOWN."+stream, body)
	if err != nil {
		return err
	}
	var resp struct {
		Success bool `json:"success"`
		Error   *struct {
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return fmt.Errorf("step-down response %q: %w", msg.Data, err)
	}
	if resp.Error != nil {
		return fmt.Errorf("step-down refused: %s (code %d, err_code %d)", resp.Error.Description, resp.Error.Code, resp.Error.ErrCode)
	}
	if !resp.Success {
		return fmt.Errorf("step-down response %q", msg.Data)
	}
	return nil
}

// sleepCtx waits d or until ctx ends, returning ctx's error then.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
