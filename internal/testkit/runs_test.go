package testkit

import "testing"

func TestDescribeRun(t *testing.T) {
	for _, tc := range []struct {
		got  []int64
		want string
	}{
		{[]int64{1, 2, 3}, "(3 counts, max 3, duplicates [] (0), gaps [] (0), first out of place at index -1)"},
		{[]int64{1, 2, 2, 4}, "(4 counts, max 4, duplicates [2] (1), gaps [3] (1), first out of place at index 2: [1 2 2 4])"},
	} {
		if got := DescribeRun(tc.got); got != tc.want {
			t.Errorf("DescribeRun(%v) = %s, want %s", tc.got, got, tc.want)
		}
	}
}
