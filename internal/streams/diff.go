// Package streams makes the JetStream streams eddy owns (input streams,
// changelogs, dead-letter and output streams) exist as eddy needs them: it
// creates a missing stream, applies the differences that are safe to change
// on an existing one, refuses the others with an error that names the field
// and both values, and tells transient JetStream errors (a cluster electing
// its leaders) from lasting ones. It knows nothing of actors or partitions.
package streams

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrIncompatible marks an existing stream whose config eddy cannot use and
// must not change: retrying does not help, an operator has to fix or delete
// the stream. Every *IncompatibleError is one.
var ErrIncompatible = errors.New("eddy: stream exists with an incompatible config")

// Spec is a stream eddy owns: the config it creates the stream with, and
// what an existing stream must keep of it.
type Spec struct {
	// Role names the kind of stream in errors and logs: "input stream",
	// "changelog", "stream" (outputs, dead letters).
	Role string
	// Config is the config a missing stream is created with. Of an existing
	// stream, Diff requires the Subjects (covered), Storage, a set
	// SubjectTransform, a non-zero MaxMsgsPerSubject and AllowAtomicPublish;
	// it raises Replicas and Duplicates and turns AllowDirect on.
	Config jetstream.StreamConfig
	// Replayed says eddy reads the stream again from any sequence (input
	// streams when a store is rebuilt, changelogs on every restore): an
	// existing one must keep its messages by limits, not by interest or as
	// a work queue. Output and dead-letter streams are the user's to consume.
	Replayed bool
	// Compacted creates a missing stream with MaxMsgsPerSubject 1: it keeps
	// the latest message of each subject (a table's stream, one subject per
	// key). An existing stream may keep more: it works, at a cost to whoever
	// reads it all.
	Compacted bool
}

// Change is one field where an existing stream differs from its Spec.
type Change struct {
	Field     string
	Have, Set string
}

// String reads "Replicas 1 -> 3".
func (c Change) String() string { return c.Field + " " + c.Have + " -> " + c.Set }

// Plan is what Diff decided for an existing stream that eddy can use.
type Plan struct {
	// Update is the existing config with Changes applied; nil when the
	// stream needs no change.
	Update *jetstream.StreamConfig
	// Changes are the safe changes Update makes (more replicas, a longer
	// duplicate window, direct gets).
	Changes []Change
	// Kept are differences eddy leaves alone, worth a log line: a stream
	// with more replicas than wanted keeps them (a node started without
	// --stream-replicas must not lower a production stream's replication).
	Kept []Change
}

// IncompatibleError says which field of an existing stream eddy cannot use,
// with the stream's value and the value eddy needs.
type IncompatibleError struct {
	Role, Stream string
	Field        string
	Have, Want   string
	Hint         string
}

// Error names the stream, the field, both values and what to do.
func (e *IncompatibleError) Error() string {
	s := fmt.Sprintf("%s %s exists with %s %s, eddy needs %s", e.Role, e.Stream, e.Field, e.Have, e.Want)
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s + ": eddy does not change this itself; fix or delete the stream"
}

// Is makes errors.Is(err, ErrIncompatible) true.
func (e *IncompatibleError) Is(target error) bool { return target == ErrIncompatible }

// Diff compares the config of an existing stream with want, without side
// effects. It returns an *IncompatibleError for the first field eddy cannot
// use, else the Plan: the update to make (if any) and the differences kept.
func Diff(want Spec, have jetstream.StreamConfig) (Plan, error) {
	w := want.Config
	bad := func(field, haveV, wantV, hint string) (Plan, error) {
		return Plan{}, &IncompatibleError{Role: want.Role, Stream: w.Name, Field: field, Have: haveV, Want: wantV, Hint: hint}
	}
	// Fields eddy relies on and cannot change without losing or
	// misplacing messages.
	for _, s := range w.Subjects {
		if !slices.ContainsFunc(have.Subjects, func(h string) bool { return covers(h, s) }) {
			return bad("Subjects", fmt.Sprint(have.Subjects), fmt.Sprint(w.Subjects),
				"eddy publishes and reads "+s)
		}
	}
	if w.SubjectTransform != nil && !sameTransform(w.SubjectTransform, have.SubjectTransform) {
		return bad("SubjectTransform", transform(have.SubjectTransform), transform(w.SubjectTransform),
			"the transform places each key in its partition: a partition count cannot change")
	}
	if w.SubjectTransform == nil && have.SubjectTransform != nil && want.Replayed {
		return bad("SubjectTransform", transform(have.SubjectTransform), "none",
			"the stream has another subject layout, such as one subject per key")
	}
	for _, k := range slices.Sorted(maps.Keys(w.Metadata)) {
		v := w.Metadata[k]
		if hv, ok := have.Metadata[k]; ok && hv != v {
			return bad("Metadata["+k+"]", hv, v, "a stream's partition count and subject layout cannot change")
		}
	}
	if have.Storage != w.Storage {
		return bad("Storage", have.Storage.String(), w.Storage.String(), "")
	}
	if want.Replayed && have.Retention != jetstream.LimitsPolicy {
		return bad("Retention", have.Retention.String(), jetstream.LimitsPolicy.String(),
			"eddy reads the stream again after a restart or a move")
	}
	if w.MaxMsgsPerSubject != 0 && have.MaxMsgsPerSubject != w.MaxMsgsPerSubject {
		return bad("MaxMsgsPerSubject", fmt.Sprint(have.MaxMsgsPerSubject), fmt.Sprint(w.MaxMsgsPerSubject),
			"a changelog is a log of every change, trimmed below the snapshots; an earlier eddy's compacted changelog must be reset with `node reset`")
	}
	if w.AllowAtomicPublish && !have.AllowAtomicPublish {
		return bad("AllowAtomicPublish", "false", "true", "a commit is one atomic batch")
	}
	if have.Sealed {
		return bad("Sealed", "true", "false", "a sealed stream takes no messages")
	}
	if have.Mirror != nil {
		return bad("Mirror", have.Mirror.Name, "none", "a mirror takes no messages")
	}

	// Fields eddy changes safely.
	var p Plan
	up := have
	switch {
	case have.Replicas < w.Replicas:
		p.Changes = append(p.Changes, Change{"Replicas", fmt.Sprint(have.Replicas), fmt.Sprint(w.Replicas)})
		up.Replicas = w.Replicas
	case have.Replicas > w.Replicas:
		p.Kept = append(p.Kept, Change{"Replicas", fmt.Sprint(have.Replicas), fmt.Sprint(w.Replicas)})
	}
	// The server refuses a duplicate window longer than MaxAge; messages
	// older than MaxAge are gone anyway.
	dup := w.Duplicates
	if have.MaxAge > 0 && dup > have.MaxAge {
		dup = have.MaxAge
	}
	if have.Duplicates < dup {
		p.Changes = append(p.Changes, Change{"Duplicates", have.Duplicates.String(), dup.String()})
		up.Duplicates = dup
	}
	if w.AllowDirect && !have.AllowDirect {
		p.Changes = append(p.Changes, Change{"AllowDirect", "false", "true"})
		up.AllowDirect = true
	}
	for _, k := range slices.Sorted(maps.Keys(w.Metadata)) {
		v := w.Metadata[k]
		if _, ok := have.Metadata[k]; !ok {
			p.Changes = append(p.Changes, Change{"Metadata[" + k + "]", "none", v})
			up.Metadata = maps.Clone(up.Metadata)
			if up.Metadata == nil {
				up.Metadata = map[string]string{}
			}
			up.Metadata[k] = v
		}
	}
	if len(p.Changes) > 0 {
		p.Update = &up
	}
	return p, nil
}

// covers reports whether the subject filter f matches every subject that s
// matches (s may hold wildcards): "S.*" covers "S.*", "S.>" covers "S.*".
func covers(f, s string) bool {
	ft, st := strings.Split(f, "."), strings.Split(s, ".")
	for i, t := range ft {
		switch {
		case t == ">":
			return len(st) > i
		case i >= len(st):
			return false
		case st[i] == ">":
			return false
		case t == "*":
		case t != st[i]:
			return false
		}
	}
	return len(ft) == len(st)
}

func sameTransform(a, b *jetstream.SubjectTransformConfig) bool {
	return b != nil && a.Source == b.Source && a.Destination == b.Destination
}

func transform(t *jetstream.SubjectTransformConfig) string {
	if t == nil {
		return "none"
	}
	return fmt.Sprintf("%q -> %q", t.Source, t.Destination)
}
