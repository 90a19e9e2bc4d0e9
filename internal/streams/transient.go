package streams

import (
	"context"
	"errors"
	"net"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// JetStream API error codes that go away by themselves (nats-server
// server/errors.json).
const (
	codeClusterNotAvailable   = 10008 // "JetStream system temporarily unavailable": no meta or stream leader for 10 s
	codeNoPeers               = 10005 // "no suitable peers for placement": cluster members still down
	codeInsufficientResources = 10023 // "insufficient resources": a member down, or not yet up
	codeStreamOffline         = 10118 // "stream is offline": its peers are down
)

// Transient reports whether a JetStream API call that failed with err may
// succeed if repeated, without anyone changing a config:
//   - no answer in time (context.DeadlineExceeded, nats.ErrTimeout): a
//     JetStream cluster without a meta leader, or a stream whose leader is
//     not elected yet, does not answer at all for its first 10 s
//     (nats-server v2.15.2);
//   - 10008 "JetStream system temporarily unavailable", what the same
//     cluster answers after 10 s without a leader;
//   - 10005 no suitable peers, 10023 insufficient resources, 10118 stream
//     offline: cluster members are down or not up yet;
//   - no responders, and the connection being down or reconnecting.
//
// Anything else (an *IncompatibleError, a bad config, 10074 replicas > 1 on
// a single server, a permission error) needs an operator.
func Transient(err error) bool {
	if err == nil || errors.Is(err, ErrIncompatible) {
		return false
	}
	var api jetstream.JetStreamError
	if errors.As(err, &api) && api.APIError() != nil {
		switch api.APIError().ErrorCode {
		case codeClusterNotAvailable, codeNoPeers, codeInsufficientResources, codeStreamOffline:
			return true
		}
		return false
	}
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrDisconnected) || errors.Is(err, nats.ErrConnectionReconnecting) ||
		errors.Is(err, nats.ErrReconnectBufExceeded) ||
		(errors.As(err, &ne) && ne.Timeout())
}
