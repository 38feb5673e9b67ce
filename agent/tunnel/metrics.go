package tunnel

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	connected    prometheus.Gauge
	streams      prometheus.Gauge
	bytes        *prometheus.CounterVec
	dialFailures *prometheus.CounterVec
	refusals     *prometheus.CounterVec
}

// newMetrics makes the tunnel metrics and registers them with reg when it
// is not nil.
func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodetrust_agent_tunnels_connected",
			Help: "Tunnels to control-plane servers that are up, draining ones included.",
		}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodetrust_agent_tunnel_streams_open",
			Help: "Proxied connections open through the tunnels.",
		}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodetrust_agent_tunnel_bytes_total",
			Help: "Bytes proxied: in is control plane to destination, out is destination to control plane.",
		}, []string{"direction"}),
		dialFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodetrust_agent_tunnel_dial_failures_total",
			Help: "Failed tunnel dials to control-plane servers, by reason.",
		}, []string{"reason"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodetrust_agent_tunnel_stream_refusals_total",
			Help: "Streams the agent refused or could not connect, by reason (not_allowed, dial_failed, ...).",
		}, []string{"reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.streams, m.bytes, m.dialFailures, m.refusals)
	}
	return m
}
