package partition

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the Prometheus metrics of partition actors, labelled by type and partition.
type Metrics struct {
	events, handlerFailures, deadLetters, commits, changelogRecords *prometheus.CounterVec
	forwarded, fenced, restoreRecords, inputGaps, restarts          *prometheus.CounterVec
	rebuildEvents, storeDiscards, outboxFound                       *prometheus.CounterVec
	snapshots, snapshotFailures, snapshotBytes, restores            *prometheus.CounterVec
	changelogTrims, commitsPipelined                                *prometheus.CounterVec
	commitSeconds                                                   *prometheus.HistogramVec
	offset, replicaLag, inputLag, lastCommit                        *prometheus.GaugeVec
	replicaRecords                                                  *prometheus.CounterVec
	state                                                           *prometheus.GaugeVec
}

// states are the values of the state label of eddy_partition_state.
var states = []State{StateStarting, StateRunning, StateRetrying, StateFenced, StateStopped}

// NewMetrics creates the metrics and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	l := []string{"type", "partition"}
	c := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "eddy", Subsystem: "partition", Name: name, Help: help}, l)
	}
	m := &Metrics{
		events:           c("events_total", "Events whose effects were added to a batch."),
		handlerFailures:  c("handler_failures_total", "Handler runs that returned an error or panicked."),
		deadLetters:      c("dead_letters_total", "Events sent to the dead-letter stream."),
		commits:          c("commits_total", "Batches committed to changelog and local store."),
		changelogRecords: c("changelog_records_total", "Records written to the changelog."),
		forwarded:        c("outbox_forwarded_total", "Outbox entries forwarded to their target streams."),
		fenced:           c("fenced_total", "Times a partition actor found a newer owner and stopped."),
		restoreRecords:   c("restore_records_total", "Changelog records replayed into the local store."),
		rebuildEvents:    c("rebuild_events_total", "Input events replayed to rebuild stores without a changelog."),
		inputGaps:        c("input_gaps_total", "Times the input stream had dropped events not yet processed."),
		restarts:         c("restarts_total", "Supervised restarts of partition actors."),
		commitSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "eddy", Subsystem: "partition",
			Name: "commit_seconds", Help: "Time to commit one batch (changelog, local store, forward).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, l),
		offset: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "eddy", Subsystem: "partition",
			Name: "offset", Help: "Input sequence of the last committed event."}, l),
		replicaLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "eddy", Subsystem: "replica",
			Name: "lag_records", Help: "Changelog records a hot replica has not applied yet."}, l),
		replicaRecords: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "eddy", Subsystem: "replica",
			Name: "applied_records_total", Help: "Changelog records a hot replica applied to its store."}, l),
		storeDiscards: c("store_discards_total", "Local stores discarded because they held changelog records the changelog no longer has."),
		outboxFound:   c("outbox_found_total", "Restored outbox entries older than half their target's duplicate window found in the target already, and not forwarded again."),
		inputLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "eddy", Subsystem: "partition",
			Name: "input_lag_events", Help: "Input events of the partition not processed yet, as of the last commit."}, l),
		lastCommit: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "eddy", Subsystem: "partition",
			Name: "last_commit_timestamp_seconds", Help: "When the partition last committed (Unix time); time() minus it is the time since."}, l),
		snapshots:        c("snapshots_total", "Snapshots of the store uploaded to the snapshot bucket."),
		snapshotFailures: c("snapshot_failures_total", "Snapshots that failed (checkpoint or upload)."),
		snapshotBytes:    c("snapshot_uploaded_bytes_total", "Bytes uploaded by snapshots (files the bucket did not hold yet)."),
		changelogTrims:   c("changelog_trims_total", "Times the changelog was trimmed below the oldest kept snapshot."),
		commitsPipelined: c("commits_pipelined_total", "Changelog commits sent while the one before was not acknowledged yet (CommitsInFlight 2)."),
		restores: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "eddy", Subsystem: "partition", Name: "restores_total",
			Help: "Restores of partition actors by path: local (store + changelog tail), replica (promoted hot replica), snapshot (snapshot + changelog tail), changelog (whole changelog), input (rebuilt from the input stream)."},
			[]string{"type", "partition", "path"}),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "eddy", Subsystem: "partition",
			Name: "state", Help: "1 for the partition actor's state (starting, running, retrying, fenced, stopped), 0 for the others."},
			[]string{"type", "partition", "state"}),
	}
	if reg != nil {
		for _, col := range []prometheus.Collector{m.events, m.handlerFailures, m.deadLetters, m.commits, m.changelogRecords,
			m.forwarded, m.fenced, m.restoreRecords, m.rebuildEvents, m.inputGaps, m.restarts, m.commitSeconds, m.offset, m.replicaLag, m.replicaRecords,
			m.storeDiscards, m.outboxFound, m.inputLag, m.lastCommit, m.state,
			m.snapshots, m.snapshotFailures, m.snapshotBytes, m.restores, m.changelogTrims, m.commitsPipelined} {
			reg.MustRegister(col)
		}
	}
	return m
}

type partitionMetrics struct {
	events, handlerFailures, deadLetters, commits, changelogRecords prometheus.Counter
	forwarded, fenced, restoreRecords, inputGaps, restarts          prometheus.Counter
	rebuildEvents, replicaRecords, storeDiscards, outboxFound       prometheus.Counter
	snapshots, snapshotFailures, snapshotBytes, changelogTrims      prometheus.Counter
	commitsPipelined                                                prometheus.Counter
	restores                                                        func(path string) prometheus.Counter
	commitSeconds                                                   prometheus.Observer
	offset, replicaLag, inputLag, lastCommit                        prometheus.Gauge
	state                                                           map[State]prometheus.Gauge
}

// setState sets the partition's state gauge.
func (m *partitionMetrics) setState(st State) {
	for s, g := range m.state {
		if s == st {
			g.Set(1)
		} else {
			g.Set(0)
		}
	}
}

func (m *Metrics) forPartition(typ string, p int) *partitionMetrics {
	if m == nil {
		m = NewMetrics(nil)
	}
	l := prometheus.Labels{"type": typ, "partition": strconv.Itoa(p)}
	pm := &partitionMetrics{
		events: m.events.With(l), handlerFailures: m.handlerFailures.With(l), deadLetters: m.deadLetters.With(l),
		commits: m.commits.With(l), changelogRecords: m.changelogRecords.With(l), forwarded: m.forwarded.With(l),
		fenced: m.fenced.With(l), restoreRecords: m.restoreRecords.With(l), rebuildEvents: m.rebuildEvents.With(l), inputGaps: m.inputGaps.With(l),
		restarts: m.restarts.With(l), commitSeconds: m.commitSeconds.With(l), offset: m.offset.With(l),
		replicaLag: m.replicaLag.With(l), replicaRecords: m.replicaRecords.With(l),
		storeDiscards: m.storeDiscards.With(l), outboxFound: m.outboxFound.With(l), inputLag: m.inputLag.With(l), lastCommit: m.lastCommit.With(l),
		snapshots: m.snapshots.With(l), snapshotFailures: m.snapshotFailures.With(l), snapshotBytes: m.snapshotBytes.With(l),
		changelogTrims: m.changelogTrims.With(l), commitsPipelined: m.commitsPipelined.With(l),
		restores: func(path string) prometheus.Counter { return m.restores.WithLabelValues(typ, strconv.Itoa(p), path) },
		state:    map[State]prometheus.Gauge{},
	}
	for _, st := range states {
		pm.state[st] = m.state.WithLabelValues(typ, strconv.Itoa(p), string(st))
	}
	return pm
}
