package proxy

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the proxy's Prometheus series.
type Metrics struct {
	Requests        *prometheus.CounterVec
	UpstreamLatency prometheus.Histogram
	CertCache       *prometheus.CounterVec
	DNSQueries      *prometheus.CounterVec
}

// NewMetrics creates the series and registers them with reg (nil: not
// registered, still usable).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "paddock_proxy_requests_total",
			Help: "Requests (terminated/plain HTTP) and connections (passthrough/opaque) by sandbox and decision.",
		}, []string{"sandbox", "decision"}),
		UpstreamLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "paddock_proxy_upstream_latency_seconds",
			Help:    "Time from forwarding a request to the upstream's response headers.",
			Buckets: prometheus.DefBuckets,
		}),
		CertCache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "paddock_proxy_cert_cache_total",
			Help: "Leaf certificate cache lookups by result (hit, miss).",
		}, []string{"result"}),
		DNSQueries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "paddock_proxy_dns_queries_total",
			Help: "DNS questions by sandbox and decision (allow, deny, refused, ratelimited).",
		}, []string{"sandbox", "decision"}),
	}
	if reg != nil {
		reg.MustRegister(m.Requests, m.UpstreamLatency, m.CertCache, m.DNSQueries)
	}
	return m
}
