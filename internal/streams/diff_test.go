package streams

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// changelogSpec and inputSpec are what eddy wants of a changelog and of an
// input stream with 4 partitions.
func changelogSpec() Spec {
	return Spec{Role: "changelog", Replayed: true, Config: jetstream.StreamConfig{
		Name: "EDDY_CL_bank_0", Subjects: []string{"eddy.cl.bank.0.>"}, Storage: jetstream.FileStorage,
		Replicas: 3, MaxBytes: -1, MaxMsgsPerSubject: 1, AllowAtomicPublish: true, AllowDirect: true,
	}}
}

func inputSpec(partitions int) Spec {
	return Spec{Role: "input stream", Replayed: true, Config: jetstream.StreamConfig{
		Name: "bank", Subjects: []string{"bank.*"}, Storage: jetstream.FileStorage, Replicas: 1, Duplicates: 10 * time.Minute,
		SubjectTransform: &jetstream.SubjectTransformConfig{Source: "bank.*",
			Destination: fmt.Sprintf("bank.{{partition(%d,1)}}.{{wildcard(1)}}", partitions)},
	}}
}

// partitionSpec is an input stream with one subject per partition.
func partitionSpec() Spec {
	return Spec{Role: "input stream", Replayed: true, Config: jetstream.StreamConfig{
		Name: "bank", Subjects: []string{"bank.0", "bank.1"}, Storage: jetstream.FileStorage, Replicas: 1,
		Duplicates: 10 * time.Minute, Metadata: map[string]string{"eddy.partitions": "2", "eddy.subjects": "partition"},
	}}
}

// asServed is want's config as a server returns it: defaults filled in.
func asServed(want Spec) jetstream.StreamConfig {
	c := want.Config
	c.MaxMsgs, c.MaxAge, c.MaxMsgSize, c.MaxConsumers = -1, 0, -1, -1
	if c.MaxMsgsPerSubject == 0 {
		c.MaxMsgsPerSubject = -1
	}
	if c.Duplicates == 0 {
		c.Duplicates = 2 * time.Minute
	}
	return c
}

func TestDiffAcceptsTheStreamEddyCreated(t *testing.T) {
	for _, want := range []Spec{changelogSpec(), inputSpec(4), partitionSpec()} {
		p, err := Diff(want, asServed(want))
		if err != nil || p.Update != nil || len(p.Kept) > 0 {
			t.Errorf("%s: plan %+v, err %v; want nothing to do", want.Role, p, err)
		}
	}
}

// Each incompatible field is refused, and the error names the field and both values.
func TestDiffRefusesIncompatibleFields(t *testing.T) {
	for _, tc := range []struct {
		name       string
		want       Spec
		change     func(*jetstream.StreamConfig)
		field      string
		have, need string
	}{
		{"other partition count", inputSpec(8), func(c *jetstream.StreamConfig) {
			c.SubjectTransform.Destination = "bank.{{partition(4,1)}}.{{wildcard(1)}}"
		}, "SubjectTransform", "partition(4,1)", "partition(8,1)"},
		{"no transform", inputSpec(4), func(c *jetstream.StreamConfig) { c.SubjectTransform = nil },
			"SubjectTransform", "none", "partition(4,1)"},
		{"other subjects", inputSpec(4), func(c *jetstream.StreamConfig) { c.Subjects = []string{"banking.*"} },
			"Subjects", "[banking.*]", "[bank.*]"},
		{"narrower subjects", inputSpec(4), func(c *jetstream.StreamConfig) { c.Subjects = []string{"bank.eu"} },
			"Subjects", "[bank.eu]", "[bank.*]"},
		{"memory storage", changelogSpec(), func(c *jetstream.StreamConfig) { c.Storage = jetstream.MemoryStorage },
			"Storage", "Memory", "File"},
		{"interest retention", changelogSpec(), func(c *jetstream.StreamConfig) { c.Retention = jetstream.InterestPolicy },
			"Retention", "Interest", "Limits"},
		{"not compacted", changelogSpec(), func(c *jetstream.StreamConfig) { c.MaxMsgsPerSubject = -1 },
			"MaxMsgsPerSubject", "-1", "1"},
		{"compacted to 5", changelogSpec(), func(c *jetstream.StreamConfig) { c.MaxMsgsPerSubject = 5 },
			"MaxMsgsPerSubject", "5", "1"},
		{"no atomic publish", changelogSpec(), func(c *jetstream.StreamConfig) { c.AllowAtomicPublish = false },
			"AllowAtomicPublish", "false", "true"},
		{"other partition count, recorded", partitionSpec(), func(c *jetstream.StreamConfig) {
			c.Metadata = map[string]string{"eddy.partitions": "4", "eddy.subjects": "partition"}
		}, "Metadata[eddy.partitions]", "4", "2"},
		{"a transform where the layout has none", partitionSpec(), func(c *jetstream.StreamConfig) {
			c.Subjects = []string{"bank.*"}
			c.SubjectTransform = &jetstream.SubjectTransformConfig{Source: "bank.*", Destination: "bank.{{partition(2,1)}}.{{wildcard(1)}}"}
		}, "SubjectTransform", "partition(2,1)", "none"},
		{"sealed", changelogSpec(), func(c *jetstream.StreamConfig) { c.Sealed = true }, "Sealed", "true", "false"},
		{"mirror", inputSpec(4), func(c *jetstream.StreamConfig) { c.Mirror = &jetstream.StreamSource{Name: "orig"} },
			"Mirror", "orig", "none"},
	} {
		have := asServed(tc.want)
		if have.SubjectTransform != nil {
			st := *have.SubjectTransform
			have.SubjectTransform = &st
		}
		tc.change(&have)
		p, err := Diff(tc.want, have)
		var ie *IncompatibleError
		if !errors.As(err, &ie) || !errors.Is(err, ErrIncompatible) {
			t.Errorf("%s: plan %+v, err %v; want an *IncompatibleError", tc.name, p, err)
			continue
		}
		msg := err.Error()
		if ie.Field != tc.field || !strings.Contains(msg, tc.field) || !strings.Contains(msg, tc.have) ||
			!strings.Contains(msg, tc.need) || !strings.Contains(msg, tc.want.Config.Name) {
			t.Errorf("%s: %q; want field %s, %s and %s named", tc.name, msg, tc.field, tc.have, tc.need)
		}
		if Transient(err) {
			t.Errorf("%s: an incompatible stream counts as transient", tc.name)
		}
	}
}

// Metadata eddy records is added to a stream that lacks it.
func TestDiffAddsMissingMetadata(t *testing.T) {
	want := partitionSpec()
	have := asServed(want)
	have.Metadata = nil
	p, err := Diff(want, have)
	if err != nil || p.Update == nil || p.Update.Metadata["eddy.partitions"] != "2" || len(p.Changes) != 2 {
		t.Fatalf("plan %+v, err %v; want the metadata added", p, err)
	}
}

// A retention other than limits is the user's on a stream eddy only
// publishes to; wider subjects are fine everywhere.
func TestDiffAcceptsWhatEddyDoesNotRelyOn(t *testing.T) {
	out := Spec{Role: "stream", Config: jetstream.StreamConfig{Name: "alerts", Subjects: []string{"alerts.*"},
		Storage: jetstream.FileStorage, Replicas: 1, Duplicates: 10 * time.Minute}}
	have := asServed(out)
	have.Retention, have.Subjects, have.MaxMsgsPerSubject = jetstream.WorkQueuePolicy, []string{"alerts.>", "other"}, 3
	if p, err := Diff(out, have); err != nil || p.Update != nil {
		t.Fatalf("plan %+v, err %v", p, err)
	}
	in := inputSpec(4)
	have = asServed(in)
	have.Subjects, have.MaxAge, have.MaxMsgsPerSubject = []string{">"}, 24*time.Hour, 100
	if p, err := Diff(in, have); err != nil || p.Update != nil {
		t.Fatalf("plan %+v, err %v", p, err)
	}
}

// Fewer replicas, a shorter duplicate window and no direct gets are
// updated, keeping the stream's other settings; more replicas are kept.
func TestDiffPlansSafeUpdates(t *testing.T) {
	want := changelogSpec()
	have := asServed(want)
	have.Replicas, have.AllowDirect, have.Description, have.MaxBytes = 1, false, "made by hand", 1<<30
	p, err := Diff(want, have)
	if err != nil || p.Update == nil {
		t.Fatalf("plan %+v, err %v", p, err)
	}
	if got := fmt.Sprint(p.Changes); got != "[Replicas 1 -> 3 AllowDirect false -> true]" {
		t.Errorf("changes %s", got)
	}
	u := p.Update
	if u.Replicas != 3 || !u.AllowDirect || u.Description != "made by hand" || u.MaxBytes != 1<<30 || u.MaxMsgsPerSubject != 1 {
		t.Errorf("update %+v", u)
	}

	have = asServed(want)
	have.Replicas = 5
	if p, err := Diff(want, have); err != nil || p.Update != nil || fmt.Sprint(p.Kept) != "[Replicas 5 -> 3]" {
		t.Errorf("more replicas: plan %+v, err %v; want them kept", p, err)
	}

	in := inputSpec(4)
	have = asServed(in)
	have.Duplicates = 2 * time.Minute
	if p, err := Diff(in, have); err != nil || p.Update == nil || p.Update.Duplicates != 10*time.Minute {
		t.Errorf("short window: plan %+v, err %v", p, err)
	}
	have.Duplicates = time.Hour
	if p, err := Diff(in, have); err != nil || p.Update != nil {
		t.Errorf("longer window: plan %+v, err %v; want it kept", p, err)
	}
	// The server refuses a window longer than MaxAge.
	have.Duplicates, have.MaxAge = time.Minute, 5*time.Minute
	if p, err := Diff(in, have); err != nil || p.Update == nil || p.Update.Duplicates != 5*time.Minute {
		t.Errorf("MaxAge 5m: plan %+v, err %v; want a 5m window", p, err)
	}
	have.Duplicates = 5 * time.Minute
	if p, err := Diff(in, have); err != nil || p.Update != nil {
		t.Errorf("window at MaxAge: plan %+v, err %v", p, err)
	}
}

func TestCovers(t *testing.T) {
	for _, tc := range []struct {
		f, s string
		want bool
	}{
		{"bank.*", "bank.*", true}, {"bank.>", "bank.*", true}, {">", "bank.*", true}, {"*.*", "bank.*", true},
		{"eddy.cl.bank.0.>", "eddy.cl.bank.0.>", true}, {"eddy.cl.>", "eddy.cl.bank.0.>", true},
		{"bank.eu", "bank.*", false}, {"bank.*", "bank.>", false}, {"bank.*.*", "bank.*", false},
		{"bank", "bank.*", false}, {"banking.*", "bank.*", false}, {"bank.>", "bank", false},
	} {
		if got := covers(tc.f, tc.s); got != tc.want {
			t.Errorf("covers(%q, %q) = %v", tc.f, tc.s, got)
		}
	}
}

func TestTransient(t *testing.T) {
	api := func(code jetstream.ErrorCode, desc string) error {
		return fmt.Errorf("create stream x: %w", &jetstream.APIError{Code: 503, ErrorCode: code, Description: desc})
	}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{context.DeadlineExceeded, true},
		{fmt.Errorf("input stream bank: %w", context.DeadlineExceeded), true},
		{nats.ErrTimeout, true},
		{nats.ErrNoResponders, true},
		{api(10008, "JetStream system temporarily unavailable"), true},
		{api(10023, "insufficient resources"), true},
		{api(10005, "no suitable peers for placement"), true},
		{api(10118, "stream is offline"), true},
		{api(10074, "replicas > 1 not supported in non-clustered mode"), false},
		{api(10065, "subjects overlap with an existing stream"), false},
		{jetstream.ErrStreamNotFound, false},
		{jetstream.ErrJetStreamNotEnabled, false},
		{&IncompatibleError{Field: "Storage"}, false},
		{context.Canceled, false},
		{errors.New("boom"), false},
	} {
		if got := Transient(tc.err); got != tc.want {
			t.Errorf("Transient(%v) = %v", tc.err, got)
		}
	}
}
