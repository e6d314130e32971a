package main

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/paddock-sandbox/paddock/test/world"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// proxyMetricsAddr is where paddockd's proxy child serves /metrics inside the
// node namespace (paddockd's --proxy-metrics-addr default).
const proxyMetricsAddr = "127.0.0.1:9465"

// proxied counts the requests and connections the proxy of w allowed and
// denied (paddock_proxy_requests_total): the paddock columns' traffic must
// show up there, or those figures did not measure the proxy path.
func proxied(ctx context.Context, w *world.World) (allow, deny float64, err error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+proxyMetricsAddr+"/metrics", nil)
	if err != nil {
		return 0, 0, err
	}
	resp, err := world.HTTPClient(w.NodePath(), nil).Do(req)
	if err != nil {
		return 0, 0, fmt.Errorf("proxy metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("proxy metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, 0, fmt.Errorf("proxy metrics: %w", err)
	}
	fam, ok := fams["paddock_proxy_requests_total"]
	if !ok {
		return 0, 0, nil
	}
	for _, m := range fam.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() != "decision" {
				continue
			}
			switch l.GetValue() {
			case "allow":
				allow += m.GetCounter().GetValue()
			case "deny":
				deny += m.GetCounter().GetValue()
			}
		}
	}
	return allow, deny, nil
}
