package enforcer

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/paddock-sandbox/paddock/bpf"
)

var (
	bpfPacketsDesc = prometheus.NewDesc("paddock_bpf_packets_total",
		"Packets the tcx program classified, by sandbox and reason (redirected = handed to a listener).",
		[]string{"sandbox", "reason"}, nil)
	bpfBytesDesc = prometheus.NewDesc("paddock_bpf_bytes_total",
		"Bytes the tcx program classified, by sandbox and reason.",
		[]string{"sandbox", "reason"}, nil)
	bpfAttachedDesc = prometheus.NewDesc("paddock_bpf_attached",
		"Host veths paddock_ingress is attached to (pinned tcx links).", nil, nil)
)

// bpfCollector reads paddock_cnt at scrape time, so the kernel's per-CPU
// counters are the only state.
type bpfCollector struct{ d *Datapath }

func (c bpfCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- bpfPacketsDesc
	ch <- bpfBytesDesc
	ch <- bpfAttachedDesc
}

func (c bpfCollector) Collect(ch chan<- prometheus.Metric) {
	c.d.mu.Lock()
	defer c.d.mu.Unlock()
	if c.d.closed {
		return
	}
	b := c.d.bpf
	ch <- prometheus.MustNewConstMetric(bpfAttachedDesc, prometheus.GaugeValue, float64(len(b.links)))
	var k bpf.RedirectCounterKey
	var vals []bpf.RedirectCounterVal
	it := b.objs.PaddockCnt.Iterate()
	for it.Next(&k, &vals) {
		var pk, by uint64
		for _, v := range vals {
			pk += v.Packets
			by += v.Bytes
		}
		sandbox := "ifindex:" + strconv.Itoa(int(k.Ifindex))
		if sb, ok := c.d.o.ByIfIndex(int(k.Ifindex)); ok {
			sandbox = sb.ShortID()
		}
		reason := "redirected"
		if k.Reason != 0 {
			reason = Reason(k.Reason).String()
		}
		ch <- prometheus.MustNewConstMetric(bpfPacketsDesc, prometheus.CounterValue, float64(pk), sandbox, reason)
		ch <- prometheus.MustNewConstMetric(bpfBytesDesc, prometheus.CounterValue, float64(by), sandbox, reason)
	}
}
