// Package workload is the test workload of eddy's fault tests: the bank and
// the word count (examples/apps) fed by a Producer that is not eddy's
// Client, the Model of what it got acknowledged, and the exact checks of
// the apps' end state against that model (ReadState, WaitCaughtUp, Check).
//
// It is for tests only: the tests of cmd/node and test/containers import
// it; no non-test code may. It reads the nodes through a Getter, so each
// test reaches them at the addresses it knows.
package workload
