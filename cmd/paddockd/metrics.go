package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/paddock-sandbox/paddock/enforcer"
)

// registerMetrics adds paddockd's own collectors to m; the enforcer and the
// proxy add theirs to the same registry through Config.Metrics.
func registerMetrics(m *prometheus.Registry, reg *enforcer.Registry, ver string) error {
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "paddock_build_info",
		Help: "Always 1; the labels say which paddockd is running.",
	}, []string{"version", "goversion"})
	buildInfo.WithLabelValues(ver, runtime.Version()).Set(1)
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfo,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "paddock_sandboxes",
			Help: "Sandboxes registered with paddockd.",
		}, func() float64 { return float64(reg.Len()) }),
	} {
		if err := m.Register(c); err != nil {
			return fmt.Errorf("register metrics: %w", err)
		}
	}
	return nil
}

// metricsHandler serves /metrics and /healthz. /healthz answers 200 only
// when paddockd is ready (API served, every component ok), else 503; the
// body is the status either way.
func metricsHandler(m *prometheus.Registry, b *backend) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m, promhttp.HandlerOpts{Registry: m}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		st := b.Status(r.Context())
		w.Header().Set("Content-Type", "application/json")
		if !st.Ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(st)
	})
	return mux
}
