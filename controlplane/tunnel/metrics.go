package tunnel

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	agents       prometheus.Gauge
	streams      prometheus.Gauge
	bytes        *prometheus.CounterVec
	dialFailures *prometheus.CounterVec
	refused      *prometheus.CounterVec
}

// newMetrics makes the server's metrics and registers them with reg when
// it is not nil.
func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		agents: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodetrust_tunnel_agents_connected",
			Help: "Agent tunnel connections, draining ones included.",
		}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodetrust_tunnel_streams_open",
			Help: "Proxied connections open through agent tunnels.",
		}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodetrust_tunnel_bytes_total",
			Help: "Bytes proxied, by direction (to_agent, from_agent).",
		}, []string{"direction"}),
		dialFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodetrust_tunnel_dial_failures_total",
			Help: "Frontend CONNECTs that got no stream, by reason (no_tunnel, agent_refused, agent_error, forbidden, bad_request, shutting_down).",
		}, []string{"reason"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodetrust_tunnel_connections_refused_total",
			Help: "Connections to the tunnel port refused, by reason (tls, not_node, http2).",
		}, []string{"reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.agents, m.streams, m.bytes, m.dialFailures, m.refused)
	}
	return m
}
