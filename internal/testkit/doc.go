// Package testkit holds what eddy's tests share: a bounded wait on a
// condition that no channel announces, and logs routed to t.Log that stay
// safe when a goroutine outlives its test.
//
// It is for tests only; every package may import it from its _test files,
// actor/, statestore/ and changelog/ included (it imports no eddy package).
package testkit
