package streams

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/eddyrt/eddy/internal/natstest"
)

// Against a real server: a stream Ensure created is found as wanted the
// next time (the server's defaults do not count as differences); a stream
// made by hand with a short duplicate window and without direct gets is
// updated in place; one with another MaxMsgsPerSubject is refused and left
// as it is.
func TestEnsureCreatesUpdatesAndRefuses(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, js := natstest.Start(t).Connect(t)

	for _, want := range []Spec{inputSpec(4), func() Spec { s := changelogSpec(); s.Config.Replicas = 1; return s }()} {
		if _, p, err := Ensure(ctx, js, want); err != nil || p.Update != nil {
			t.Fatalf("create %s: plan %+v, err %v", want.Role, p, err)
		}
		if _, p, err := Ensure(ctx, js, want); err != nil || p.Update != nil || len(p.Kept) > 0 {
			t.Fatalf("%s again: plan %+v, err %v; want nothing to do", want.Role, p, err)
		}
	}

	want := changelogSpec()
	want.Config.Name, want.Config.Subjects, want.Config.Replicas = "EDDY_CL_bank_1", []string{"eddy.cl.bank.1.>"}, 1
	want.Config.Duplicates = 10 * time.Minute
	byHand := want.Config
	byHand.AllowDirect, byHand.Duplicates = false, time.Minute
	if _, err := js.CreateStream(ctx, byHand); err != nil {
		t.Fatal(err)
	}
	st, p, err := Ensure(ctx, js, want)
	if err != nil || fmt.Sprint(p.Changes) != "[Duplicates 1m0s -> 10m0s AllowDirect false -> true]" {
		t.Fatalf("plan %+v, err %v", p, err)
	}
	if c := st.CachedInfo().Config; !c.AllowDirect || c.Duplicates != 10*time.Minute {
		t.Fatalf("not updated: %+v", c)
	}

	want.Config.Name, want.Config.Subjects = "EDDY_CL_bank_2", []string{"eddy.cl.bank.2.>"}
	byHand = want.Config
	byHand.MaxMsgsPerSubject = 0
	if _, err := js.CreateStream(ctx, byHand); err != nil {
		t.Fatal(err)
	}
	_, _, err = Ensure(ctx, js, want)
	var ie *IncompatibleError
	if !errors.As(err, &ie) || ie.Field != "MaxMsgsPerSubject" || ie.Have != "-1" || ie.Want != "1" {
		t.Fatalf("err %v; want MaxMsgsPerSubject -1 refused", err)
	}
	t.Logf("refused: %v", err)
	info, err := js.Stream(ctx, "EDDY_CL_bank_2")
	if err != nil || info.CachedInfo().Config.MaxMsgsPerSubject != -1 {
		t.Fatalf("the refused stream was changed: %v", err)
	}

	// Replicas 3 on a single server is a config error, said so.
	r3 := inputSpec(4)
	r3.Config.Name, r3.Config.Subjects, r3.Config.Replicas = "r3", []string{"r3.*"}, 3
	r3.Config.SubjectTransform = nil
	if _, _, err := Ensure(ctx, js, r3); err == nil || Transient(err) {
		t.Fatalf("R3 on one server: %v", err)
	} else {
		t.Logf("R3 on one server: %v", err)
	}
}
