package metadata

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the server's Prometheus metrics.
type Metrics struct {
	requests    *prometheus.CounterVec
	concealed   *prometheus.CounterVec
	denied      *prometheus.CounterVec
	watchers    prometheus.Gauge
	wakeups     prometheus.Counter
	reloads     *prometheus.CounterVec
	generation  prometheus.Gauge
	fastReqs    map[reqKey]prometheus.Counter
	fastDenials map[string]prometheus.Counter
}

type reqKey struct {
	v    View
	code int
}

// Denial reasons, the values of the reason label.
const (
	denyMethod    = "method"
	denyForwarded = "forwarded"
	denyHost      = "host"
	denyCaller    = "unknown_caller"
	denyFlavor    = "missing_flavor"
	denyLegacy    = "legacy"
	denyRequest   = "bad_request"
	denyWatchers  = "too_many_watchers"
)

// NewMetrics registers the server's metrics with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodetrust_metadata_requests_total",
			Help: "Metadata requests answered, by caller view (host, pod, none) and HTTP status code.",
		}, []string{"view", "code"}),
		concealed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodetrust_metadata_concealment_hits_total",
			Help: "Pod requests that touched concealed data: kind=path for a request of a concealed entry, kind=redacted for a listing or dump that left one out.",
		}, []string{"kind"}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodetrust_metadata_denied_total",
			Help: "Requests refused, by reason.",
		}, []string{"reason"}),
		watchers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodetrust_metadata_watchers",
			Help: "wait_for_change requests currently waiting.",
		}),
		wakeups: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodetrust_metadata_watch_wakeups_total",
			Help: "wait_for_change requests answered because their value changed.",
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodetrust_metadata_reloads_total",
			Help: "Data file loads, by result (ok, error, unchanged).",
		}, []string{"result"}),
		generation: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodetrust_metadata_data_generation",
			Help: "Generation of the data being served; it grows with each accepted change.",
		}),
		fastReqs:    map[reqKey]prometheus.Counter{},
		fastDenials: map[string]prometheus.Counter{},
	}
	for _, v := range []View{ViewNone, ViewHost, ViewPod} {
		for _, c := range []int{200, 301, 400, 403, 404, 405, 429, 500} {
			m.fastReqs[reqKey{v, c}] = m.requests.WithLabelValues(v.String(), strconv.Itoa(c))
		}
	}
	for _, r := range []string{denyMethod, denyForwarded, denyHost, denyCaller, denyFlavor, denyLegacy, denyRequest, denyWatchers} {
		m.fastDenials[r] = m.denied.WithLabelValues(r)
	}
	for _, k := range []string{"path", "redacted"} {
		m.concealed.WithLabelValues(k)
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.concealed, m.denied, m.watchers, m.wakeups, m.reloads, m.generation)
	}
	return m
}

func (m *Metrics) request(v View, code int) {
	if c, ok := m.fastReqs[reqKey{v, code}]; ok {
		c.Inc()
		return
	}
	m.requests.WithLabelValues(v.String(), strconv.Itoa(code)).Inc()
}

func (m *Metrics) deny(reason string) { m.fastDenials[reason].Inc() }
