package testkit

import "fmt"

// DescribeRun summarizes a sequence of running counts that should be
// exactly 1..n, once each and in order (an emitted word count, say): how
// many, the largest, the duplicates and gaps, and where it first goes out
// of order, with the counts around that place. For failure messages.
func DescribeRun(got []int64) string {
	seen := map[int64]int{}
	var top int64
	disorder := -1
	for i, n := range got {
		seen[n]++
		top = max(top, n)
		if disorder < 0 && n != int64(i+1) {
			disorder = i
		}
	}
	var dups, gaps []int64
	for n := int64(1); n <= top; n++ {
		switch {
		case seen[n] == 0:
			gaps = append(gaps, n)
		case seen[n] > 1:
			dups = append(dups, n)
		}
	}
	trim := func(s []int64) []int64 { return s[:min(len(s), 10)] }
	around := ""
	if disorder >= 0 {
		around = fmt.Sprintf(": %v", got[max(0, disorder-3):min(len(got), disorder+5)])
	}
	return fmt.Sprintf("(%d counts, max %d, duplicates %v (%d), gaps %v (%d), first out of place at index %d%s)",
		len(got), top, trim(dups), len(dups), trim(gaps), len(gaps), disorder, around)
}
