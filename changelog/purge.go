package changelog

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// PurgeState removes the state records (values and tombstones of every
// store) below sequence upTo (exclusive), keeping the stream, its meta
// record and its outbox entries: the state is being rebuilt from the input
// stream, and only records from upTo on belong to it. Purging again is
// harmless.
func PurgeState(ctx context.Context, js jetstream.JetStream, s Subjects, upTo uint64) error {
	st, err := js.Stream(ctx, s.Stream())
	if err != nil {
		return fmt.Errorf("purge state %s: %w", s.Stream(), err)
	}
	// <prefix><store>.<key>: two tokens; the meta record has one, an outbox
	// entry three (_out.<offset>.<index>).
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(s.prefix+"*.*"), jetstream.WithPurgeSequence(upTo)); err != nil {
		return fmt.Errorf("purge state %s: %w", s.Stream(), err)
	}
	return nil
}
