package agent

import (
	"github.com/nodetrust/nodetrust/bootstrap"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the agent's Prometheus metrics.
type metrics struct {
	rotations   *prometheus.CounterVec
	failures    *prometheus.CounterVec
	csrWait     *prometheus.HistogramVec
	lastContact prometheus.Gauge
	// trustChecks counts reads of the trust bundle by result: ok,
	// not_published (404), failed.
	trustChecks *prometheus.CounterVec
}

// Failure reasons, the values of the reason label.
const (
	reasonMetadata     = "metadata"
	reasonDenied       = "denied"
	reasonUnauthorized = "unauthorized"
	reasonForbidden    = "forbidden"
	reasonTimeout      = "timeout"
	reasonStore        = "store"
	reasonNetwork      = "network"
	reasonOther        = "other"
)

func newMetrics(reg prometheus.Registerer, a *Agent) *metrics {
	m := &metrics{
		rotations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodetrust_agent_rotations_total",
			Help: "Certificates obtained, by credential (client, serving) and how (bootstrap, renew).",
		}, []string{"credential", "how"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodetrust_agent_failures_total",
			Help: "Failed attempts to obtain a certificate, by credential and reason (metadata, denied, unauthorized, forbidden, timeout, store, network, other).",
		}, []string{"credential", "reason"}),
		csrWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "nodetrust_agent_csr_duration_seconds",
			Help:    "Time from creating a CSR to holding the issued certificate.",
			Buckets: prometheus.ExponentialBuckets(0.005, 4, 10),
		}, []string{"credential"}),
		lastContact: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodetrust_agent_last_contact_timestamp_seconds",
			Help: "Unix time of the last successful exchange with the API server.",
		}),
		trustChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodetrust_agent_trust_bundle_checks_total",
			Help: "Reads of the cluster trust bundle (ConfigMap kube-public/nodetrust-trust-bundle), by result: ok, not_published, failed.",
		}, []string{"result"}),
	}
	if reg == nil {
		return m
	}
	expiry := prometheus.NewGaugeFunc // one per credential, computed at scrape time
	collectors := []prometheus.Collector{m.rotations, m.failures, m.csrWait, m.lastContact, m.trustChecks,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "nodetrust_agent_trust_bundle_generation",
			Help: "Generation of the cluster trust bundle the agent follows (0: none published or not read yet).",
		}, func() float64 {
			if b := a.trust.current(); b != nil {
				return float64(b.Generation)
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "nodetrust_agent_trust_bundle_roots",
			Help: "Cluster CAs the agent trusts (in <stateDir>/ca.crt); 2 during a CA rotation.",
		}, func() float64 { roots, _ := bootstrap.ParseCerts(a.caPEMOrNil()); return float64(len(roots)) }),
	}
	for _, c := range a.creds {
		c := c
		collectors = append(collectors,
			expiry(prometheus.GaugeOpts{
				Name:        "nodetrust_agent_certificate_expiry_seconds",
				Help:        "Seconds until the credential's certificate expires (negative: expired; absent certificate: -1e9).",
				ConstLabels: prometheus.Labels{"credential": c.name},
			}, func() float64 { return c.secondsLeft(a.clock.Now()) }),
			expiry(prometheus.GaugeOpts{
				Name:        "nodetrust_agent_certificate_next_rotation_seconds",
				Help:        "Seconds until the credential's planned renewal.",
				ConstLabels: prometheus.Labels{"credential": c.name},
			}, func() float64 { return c.secondsToRenewal(a.clock.Now()) }),
		)
	}
	reg.MustRegister(collectors...)
	return m
}
