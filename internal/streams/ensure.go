package streams

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"
)

// codeReplicasNotSupported is "replicas > 1 not supported in non-clustered mode".
const codeReplicasNotSupported = 10074

// Ensure makes the stream of want exist as eddy needs it, in one attempt:
// it creates a missing stream, applies the Plan that Diff makes for an
// existing one, and returns an *IncompatibleError when the existing stream
// cannot be used. It returns the stream and the Plan it applied (empty when
// it created the stream or found it as wanted). Its other errors are the
// JetStream API's, wrapped; Transient tells whether retrying may help.
func Ensure(ctx context.Context, js jetstream.JetStream, want Spec) (jetstream.Stream, Plan, error) {
	name := want.Config.Name
	st, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		cfg := want.Config
		if want.Compacted {
			cfg.MaxMsgsPerSubject = 1
		}
		st, err = js.CreateStream(ctx, cfg)
		if err == nil {
			return st, Plan{}, nil // created, or it existed exactly as wanted
		}
		if !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return nil, Plan{}, fmt.Errorf("create %s %s: %w", want.Role, name, explain(err, want))
		}
		// Another node created it meanwhile, with another config.
		st, err = js.Stream(ctx, name)
	}
	if err != nil {
		return nil, Plan{}, fmt.Errorf("%s %s: %w", want.Role, name, err)
	}
	plan, err := Diff(want, st.CachedInfo().Config)
	if err != nil {
		return nil, Plan{}, err
	}
	if plan.Update == nil {
		return st, plan, nil
	}
	st, err = js.UpdateStream(ctx, *plan.Update)
	if err != nil {
		return nil, Plan{}, fmt.Errorf("update %s %s (%v): %w", want.Role, name, plan.Changes, explain(err, want))
	}
	return st, plan, nil
}

// explain adds what an operator should know to a JetStream error that is a
// config mistake.
func explain(err error, want Spec) error {
	var api jetstream.JetStreamError
	if errors.As(err, &api) && api.APIError() != nil && api.APIError().ErrorCode == codeReplicasNotSupported {
		return fmt.Errorf("%w (Replicas %d needs a JetStream cluster: lower --stream-replicas)", err, want.Config.Replicas)
	}
	return err
}

// LogPlan logs each change plan made to the existing stream of spec, and
// each difference it kept; a nil log logs nothing.
func LogPlan(log *slog.Logger, spec Spec, plan Plan) {
	if log == nil {
		return
	}
	for _, c := range plan.Changes {
		log.Info("stream updated", "stream", spec.Config.Name, "role", spec.Role, "field", c.Field, "from", c.Have, "to", c.Set)
	}
	for _, c := range plan.Kept {
		log.Warn("stream keeps its own setting", "stream", spec.Config.Name, "role", spec.Role, "field", c.Field, "has", c.Have, "configured", c.Set)
	}
}
