package mdlocal

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	upstreamUp   prometheus.Gauge
	lastMirror   prometheus.Gauge
	mirrorErrors prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		upstreamUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodetrust_agent_pod_metadata_upstream_up",
			Help: "1 when the last exchange with the upstream metadata server succeeded; 0 means pods are served stale data (or 503 before the first mirror).",
		}),
		lastMirror: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodetrust_agent_pod_metadata_last_mirror_timestamp_seconds",
			Help: "When upstream metadata was last mirrored for pods (Unix time; 0: never).",
		}),
		mirrorErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodetrust_agent_pod_metadata_mirror_errors_total",
			Help: "Upstream metadata dumps that could not be served (undecodable or invalid); the last good data stays.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.upstreamUp, m.lastMirror, m.mirrorErrors)
	}
	return m
}
