package changelog

import "testing"

func TestStreamPartition(t *testing.T) {
	for _, tc := range []struct {
		stream, typ string
		p           int
		ok          bool
	}{
		{"EDDY_CL_bank_3", "bank", 3, true},
		{"EDDY_CL_bank_eu_3", "bank", 0, false},
		{"EDDY_CL_bank_eu_3", "bank_eu", 3, true},
		{"EDDY_CL_bank_", "bank", 0, false},
		{"EDDY_CL_bank_1x", "bank", 0, false},
		{"bank", "bank", 0, false},
	} {
		p, ok := StreamPartition(tc.stream, tc.typ)
		if p != tc.p || ok != tc.ok {
			t.Errorf("StreamPartition(%q, %q) = %d, %v; want %d, %v", tc.stream, tc.typ, p, ok, tc.p, tc.ok)
		}
	}
	if p, ok := StreamPartition(NewSubjects("words", 12).Stream(), "words"); !ok || p != 12 {
		t.Errorf("the stream of words/12 parses as %d, %v", p, ok)
	}
}
