package controlplane

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is one scrape of a Prometheus endpoint, by family name.
type Metrics map[string]*dto.MetricFamily

// ScrapeAPIServer reads the apiserver's own /metrics with the admin's
// credentials (apiserver_request_total, APF's per-flow-schema counters,
// apiserver_longrunning_requests, ...).
func (c *ControlPlane) ScrapeAPIServer(ctx context.Context) (Metrics, error) {
	raw, err := c.client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("controlplane: scraping the apiserver's metrics: %w", err)
	}
	return ParseMetrics(raw)
}

// ParseMetrics parses Prometheus' text format.
func ParseMetrics(text []byte) (Metrics, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("controlplane: parsing metrics: %w", err)
	}
	return Metrics(fams), nil
}

// Sum adds the values of family name's series (counters, gauges,
// untyped) whose labels have every value in match.
func (m Metrics) Sum(name string, match map[string]string) float64 {
	var sum float64
	for _, v := range m.By(name, "", match) {
		sum += v
	}
	return sum
}

// By is Sum grouped by the value of one label ("" for a single group
// keyed "").
func (m Metrics) By(name, label string, match map[string]string) map[string]float64 {
	if label == "" {
		return m.ByLabels(name, nil, match)
	}
	return m.ByLabels(name, []string{label}, match)
}

// ByLabels is Sum grouped by the values of several labels, joined with a
// space ("PUT leases").
func (m Metrics) ByLabels(name string, group []string, match map[string]string) map[string]float64 {
	res := map[string]float64{}
	f, ok := m[name]
	if !ok {
		return res
	}
	for _, s := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range s.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if !matches(labels, match) {
			continue
		}
		var v float64
		switch {
		case s.Counter != nil:
			v = s.Counter.GetValue()
		case s.Gauge != nil:
			v = s.Gauge.GetValue()
		case s.Untyped != nil:
			v = s.Untyped.GetValue()
		default:
			continue
		}
		var key []string
		for _, g := range group {
			key = append(key, labels[g])
		}
		res[strings.Join(key, " ")] += v
	}
	return res
}

func matches(labels, match map[string]string) bool {
	for k, want := range match {
		if labels[k] != want {
			return false
		}
	}
	return true
}
