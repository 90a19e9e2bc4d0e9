package eddy

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/eddyrt/eddy/partition"
)

// Client sends events to actors and asks them questions. It needs only a NATS
// connection, not a node.
type Client struct {
	nc *nats.Conn
	js jetstream.JetStream

	mu     sync.Mutex
	inputs map[string]partition.Input // by actor type, read from the input streams
}

// NewClient returns a client over nc.
func NewClient(nc *nats.Conn) (*Client, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	return &Client{nc: nc, js: js}, nil
}

// Send appends v (msgpack) as an event for key to the input stream of
// actorType and returns once JetStream has stored it.
func (c *Client) Send(ctx context.Context, actorType, key string, v any) error {
	return c.SendWithID(ctx, actorType, key, "", v)
}

// SendWithID is Send with a message id: JetStream stores an event with the
// same id only once within the stream's duplicate window, so a retried Send
// is not processed twice.
func (c *Client) SendWithID(ctx context.Context, actorType, key, msgID string, v any) error {
	m, err := c.eventMsg(ctx, actorType, key, v)
	if err != nil {
		return err
	}
	if msgID != "" {
		m.Header.Set(jetstream.MsgIDHeader, msgID)
	}
	if _, err := c.js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("eddy: send to %s/%s: %w", actorType, key, err)
	}
	return nil
}

// Ask sends v to the actor for key and decodes the handler's Reply into reply.
// The reply arrives only after the event's effects are committed. If ctx ends
// first the event may still be processed; use a message id to retry safely.
func (c *Client) Ask(ctx context.Context, actorType, key string, v, reply any) error {
	m, err := c.eventMsg(ctx, actorType, key, v)
	if err != nil {
		return err
	}
	inbox := c.nc.NewRespInbox()
	sub, err := c.nc.SubscribeSync(inbox)
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()
	m.Header.Set(partition.HeaderReply, inbox)
	if _, err := c.js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("eddy: ask %s/%s: %w", actorType, key, err)
	}
	resp, err := sub.NextMsgWithContext(ctx)
	if err != nil {
		return fmt.Errorf("eddy: ask %s/%s: waiting for the reply: %w", actorType, key, err)
	}
	if reply == nil {
		return nil
	}
	return msgpack.Unmarshal(resp.Data, reply)
}

func (c *Client) eventMsg(ctx context.Context, actorType, key string, v any) (*nats.Msg, error) {
	if actorType == "" {
		return nil, errors.New("eddy: no actor type")
	}
	b, err := encode(v)
	if err != nil {
		return nil, err
	}
	in, err := c.input(ctx, actorType)
	if err != nil {
		return nil, err
	}
	return in.Msg(key, b), nil
}

// input returns the addressing of actorType's input stream, read from the
// stream's metadata once per client. A stream without eddy's metadata
// (made by an earlier eddy) takes one subject per key.
func (c *Client) input(ctx context.Context, actorType string) (partition.Input, error) {
	c.mu.Lock()
	in, ok := c.inputs[actorType]
	c.mu.Unlock()
	if ok {
		return in, nil
	}
	st, err := c.js.Stream(ctx, actorType)
	if err != nil {
		return partition.Input{}, fmt.Errorf("eddy: input stream of %s: %w", actorType, err)
	}
	in, ok = partition.InputOf(st.CachedInfo().Config)
	if !ok {
		in = partition.Input{Type: actorType, KeyedSubjects: true}
	}
	c.mu.Lock()
	if c.inputs == nil {
		c.inputs = make(map[string]partition.Input)
	}
	c.inputs[actorType] = in
	c.mu.Unlock()
	return in, nil
}
