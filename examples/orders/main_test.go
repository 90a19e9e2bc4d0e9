package main

import "testing"

// The example runs to the end: every order enriched.
func TestOrdersExample(t *testing.T) {
	if err := run(); err != nil {
		t.Fatal(err)
	}
}
