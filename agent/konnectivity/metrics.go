package konnectivity

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	connected prometheus.Gauge
	conns     prometheus.Gauge
	bytes     *prometheus.CounterVec
	refusals  *prometheus.CounterVec
}

// newMetrics makes the metrics and registers them with reg when it is not
// nil. Names mirror the native tunnel's with konnectivity in place of
// tunnel.
func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodetrust_agent_konnectivity_streams_connected",
			Help: "AgentService.Connect streams to konnectivity-servers that are up.",
		}),
		conns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodetrust_agent_konnectivity_connections_open",
			Help: "Proxied connections open through konnectivity streams.",
		}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodetrust_agent_konnectivity_bytes_total",
			Help: "Bytes proxied: in is control plane to destination, out is destination to control plane.",
		}, []string{"direction"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodetrust_agent_konnectivity_dial_refusals_total",
			Help: "DIAL_REQs answered with an error, by reason (not_allowed, dial_failed, cancelled).",
		}, []string{"reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.conns, m.bytes, m.refusals)
	}
	return m
}
