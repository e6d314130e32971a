package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// table holds one figure per row (a named figure) and target, or the error
// that stopped its measurement.
type table struct {
	rows    []string
	targets []string
	values  map[string][]float64
	errs    map[string][]error
}

func newTable(targets []string, rows ...string) *table {
	t := &table{rows: rows, targets: targets, values: map[string][]float64{}, errs: map[string][]error{}}
	for _, r := range rows {
		t.values[r] = make([]float64, len(targets))
		t.errs[r] = make([]error, len(targets))
		for i := range targets {
			t.values[r][i] = math.NaN()
		}
	}
	return t
}

func (t *table) set(rowName string, target int, v float64) {
	if _, ok := t.values[rowName]; !ok {
		panic("bench: unknown row " + rowName) // a programming error, caught by the first run
	}
	t.values[rowName][target] = v
}

func (t *table) fail(rowName string, target int, err error) { t.errs[rowName][target] = err }

// write prints the table: the first target is the baseline, the others show
// their figure and its ratio to the baseline.
func (t *table) write(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%s\t%s\t\n", "", strings.Join(t.targets, "\t"))
	for _, r := range t.rows {
		cells := []string{r}
		base := t.values[r][0]
		for i := range t.targets {
			cells = append(cells, t.cell(r, i, base))
		}
		fmt.Fprintf(tw, "%s\t\n", strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

func (t *table) cell(r string, i int, base float64) string {
	if t.errs[r][i] != nil {
		return "error"
	}
	v := t.values[r][i]
	if math.IsNaN(v) {
		return "-"
	}
	s := format(v)
	if i == 0 || math.IsNaN(base) || base == 0 {
		return s
	}
	return fmt.Sprintf("%s (%.2fx)", s, v/base)
}

// format keeps three significant figures, enough for figures this noisy.
func format(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// percentile is the nearest-rank p-th percentile (0 < p ≤ 100) of ds, in
// unit; NaN for no samples.
func percentile(ds []time.Duration, p float64, unit time.Duration) float64 {
	if len(ds) == 0 {
		return math.NaN()
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	rank = min(max(rank, 1), len(s))
	return float64(s[rank-1]) / float64(unit)
}
