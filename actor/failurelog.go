package actor

import (
	"log/slog"
	"time"
)

// failureLogEvery is how often a series of failures is logged after its
// first failure: an actor that fails every 2 s while a dependency is away
// (NATS restarting, say) writes one line when the series begins and one every
// failureLogEvery, not one per restart.
const failureLogEvery = 10 * time.Second

// failureLog keeps a series of consecutive failures of one actor readable in
// the logs. It is used on the actor's goroutine only.
type failureLog struct {
	since    time.Time // the series' first failure
	n        int       // failures in the series
	lastLine time.Time // when the series was last logged above Debug
}

// begin starts a new series.
func (l *failureLog) begin() { *l = failureLog{} }

// failed logs one failure of the series: the first one, and then one line
// every failureLogEvery that says how long the series has lasted, at Error;
// the others at Debug.
func (l *failureLog) failed(log *slog.Logger, err error, restart int, backoff time.Duration) {
	now := time.Now()
	l.n++
	switch {
	case l.n == 1:
		l.since, l.lastLine = now, now
		log.Error("actor failed; restarting", "err", err, "restart", restart, "backoff", backoff)
	case now.Sub(l.lastLine) >= failureLogEvery:
		l.lastLine = now
		log.Error("actor still failing; restarting", "err", err, "failures", l.n,
			"failing_for", now.Sub(l.since).Round(time.Second), "backoff", backoff)
	default:
		log.Debug("actor failed; restarting", "err", err, "restart", restart, "backoff", backoff)
	}
}
