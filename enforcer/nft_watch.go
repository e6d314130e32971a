package enforcer

import (
	"context"
	"fmt"
	"time"

	"github.com/google/nftables"
	"github.com/prometheus/client_golang/prometheus"
)

// watchInterval bounds how long a deleted or flushed table stays missing.
const watchInterval = 200 * time.Millisecond

// Watch polls that table inet paddock is complete (chains, rules, set
// contents) and restores all of it when someone deleted or flushed it.
// It returns when ctx ends or the firewall is deleted.
func (f *Firewall) Watch(ctx context.Context) {
	tick := time.NewTicker(watchInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		f.mu.Lock()
		if f.deleted {
			f.mu.Unlock()
			return
		}
		problem := f.verify()
		if problem == "" {
			f.health = "ok"
			f.mu.Unlock()
			continue
		}
		if err := f.restore(); err != nil {
			f.health = fmt.Sprintf("table inet %s damaged (%s) and restore failed: %v", nftTable, problem, err)
			f.log.Error("nftables table paddock was removed; restore failed", "problem", problem, "err", err)
		} else {
			f.restores.Inc()
			f.log.Error("nftables table paddock was removed; restored", "problem", problem, "sandboxes", len(f.sbs))
		}
		f.mu.Unlock()
	}
}

// verify returns "" when the kernel holds the table as built, else what
// differs. Callers hold f.mu.
func (f *Firewall) verify() string {
	if _, err := f.conn.ListTableOfFamily(nftTable, nftables.TableFamilyINet); err != nil {
		return "table missing"
	}
	n, err := f.ruleCount()
	if err != nil {
		return err.Error()
	}
	if n != f.want {
		return fmt.Sprintf("%d rules instead of %d", n, f.want)
	}
	s, err := f.conn.GetSetByName(f.rs.table, setIfs)
	if err != nil {
		return "set " + setIfs + " missing"
	}
	elems, err := f.conn.GetSetElements(s)
	if err != nil {
		return "set " + setIfs + ": " + err.Error()
	}
	if want := len(f.sbs) + len(f.inherited[setIfs]); len(elems) != want {
		return fmt.Sprintf("set %s holds %d interfaces instead of %d", setIfs, len(elems), want)
	}
	return ""
}

// dropCounters exposes the per-reason named counters of the table as
// paddock_nft_dropped_total{reason}, read at scrape time.
type dropCounters struct{ f *Firewall }

var nftDroppedDesc = prometheus.NewDesc("paddock_nft_dropped_total",
	"Packets from sandboxes nftables dropped, by reason (counted before log rate limiting).",
	[]string{"reason"}, nil)

func (d dropCounters) Describe(ch chan<- *prometheus.Desc) { ch <- nftDroppedDesc }

func (d dropCounters) Collect(ch chan<- prometheus.Metric) {
	counts, err := d.f.DropCounts()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(nftDroppedDesc, err)
		return
	}
	for reason, n := range counts {
		ch <- prometheus.MustNewConstMetric(nftDroppedDesc, prometheus.CounterValue, float64(n), reason)
	}
}

// DropCounts returns the packets dropped so far per reason name.
func (f *Firewall) DropCounts() (map[string]uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.deleted || f.rs == nil {
		return nil, fmt.Errorf("nftables table paddock is not installed")
	}
	objs, err := f.conn.GetObjects(f.rs.table)
	if err != nil {
		return nil, fmt.Errorf("read nftables counters: %w", err)
	}
	byName := map[string]Reason{}
	for _, r := range Reasons() {
		byName[nftName(r)] = r
	}
	out := map[string]uint64{}
	for _, o := range objs {
		c, ok := o.(*nftables.CounterObj)
		if !ok {
			continue
		}
		if r, ok := byName[c.Name]; ok {
			out[r.String()] = c.Packets
		}
	}
	return out, nil
}
