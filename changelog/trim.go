package changelog

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Trim removes every record below sequence upTo (exclusive): the records a
// snapshot at upTo holds, or that are older. The caller keeps upTo at or
// below the oldest snapshot it keeps, at a meta record, so that the
// changelog always holds its newest meta record (fencing reads it) and a
// restore from any kept snapshot finds the records after it; outbox
// entries not forwarded yet must be in the snapshots. A reader positioned below
// upTo must restore from a snapshot (see Meta.Continues). Trimming again,
// or below the first sequence, is harmless.
func Trim(ctx context.Context, js jetstream.JetStream, s Subjects, upTo uint64) error {
	st, err := js.Stream(ctx, s.Stream())
	if err != nil {
		return fmt.Errorf("trim %s: %w", s.Stream(), err)
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSequence(upTo)); err != nil {
		return fmt.Errorf("trim %s below %d: %w", s.Stream(), upTo, err)
	}
	return nil
}
