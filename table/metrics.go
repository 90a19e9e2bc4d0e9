package table

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the Prometheus metrics of a node's tables, labelled by table.
type Metrics struct {
	records, rejected  *prometheus.CounterVec
	applied, lag, boot *prometheus.GaugeVec
}

// NewMetrics creates the metrics and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	l := []string{"table"}
	gauge := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "eddy", Subsystem: "table", Name: name, Help: help}, l)
	}
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "eddy", Subsystem: "table", Name: name, Help: help}, l)
	}
	m := &Metrics{
		records:  counter("applied_records_total", "Stream records applied to the table's local store."),
		rejected: counter("rejected_records_total", "Stream records the table could not take (no key, a value readers cannot decode), skipped."),
		applied:  gauge("applied_sequence", "The last stream sequence the table applied."),
		lag:      gauge("lag_records", "Records of the stream the table had not applied, as of its last batch."),
		boot:     gauge("bootstrap_ratio", "How far the table's bootstrap is (1: caught up with the stream as it was at start)."),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.records, m.rejected, m.applied, m.lag, m.boot} {
			reg.MustRegister(c)
		}
	}
	return m
}

type globalMetrics struct {
	records, rejected       prometheus.Counter
	applied, lag, bootstrap prometheus.Gauge
}

func (m *Metrics) forTable(name string) *globalMetrics {
	if m == nil {
		m = NewMetrics(nil)
	}
	return &globalMetrics{records: m.records.WithLabelValues(name), rejected: m.rejected.WithLabelValues(name),
		applied: m.applied.WithLabelValues(name), lag: m.lag.WithLabelValues(name), bootstrap: m.boot.WithLabelValues(name)}
}
