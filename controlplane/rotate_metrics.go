package controlplane

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodetrust/nodetrust/controlplane/rotation"
)

// rotationCollector reports the cluster-CA rotation at scrape time.
type rotationCollector struct {
	r                 *rotator
	phase, gen, nodes *prometheus.Desc
	phases            []rotation.Phase
}

func newRotationCollector(r *rotator) *rotationCollector {
	return &rotationCollector{r: r,
		phase: prometheus.NewDesc("nodetrust_controlplane_ca_rotation_phase",
			"Cluster-CA rotation phase: 1 for the current one (idle, update-clients, update-servers, rollback).", []string{"phase"}, nil),
		gen: prometheus.NewDesc("nodetrust_controlplane_ca_rotation_generation",
			"Generation of the published trust bundle (ConfigMap kube-public/nodetrust-trust-bundle).", nil, nil),
		nodes: prometheus.NewDesc("nodetrust_controlplane_ca_rotation_nodes",
			"Nodes with an issued client certificate, by whether its CA is the active one (on_active: true or false).", []string{"on_active"}, nil),
		phases: []rotation.Phase{rotation.Idle, rotation.UpdateClients, rotation.UpdateServers, rotation.RolledBack},
	}
}

func (c *rotationCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.phase
	ch <- c.gen
	ch <- c.nodes
}

func (c *rotationCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.r.Status()
	for _, p := range c.phases {
		v := 0.0
		if string(p) == st.Phase {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.phase, prometheus.GaugeValue, v, string(p))
	}
	ch <- prometheus.MustNewConstMetric(c.gen, prometheus.GaugeValue, float64(st.Generation))
	ch <- prometheus.MustNewConstMetric(c.nodes, prometheus.GaugeValue, float64(st.Nodes-st.NodesNotOnActive), "true")
	ch <- prometheus.MustNewConstMetric(c.nodes, prometheus.GaugeValue, float64(st.NodesNotOnActive), "false")
}
