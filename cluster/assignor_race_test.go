//go:build race

package cluster

// raceEnabled is set when the tests run under the race detector, which slows
// the pure, single-goroutine assignor simulation about fivefold.
const raceEnabled = true
