package controlplane

import "testing"

func TestMetricsSumAndBy(t *testing.T) {
	m, err := ParseMetrics([]byte(`# TYPE apiserver_request_total counter
apiserver_request_total{code="200",resource="leases",verb="PUT"} 12
apiserver_request_total{code="200",resource="nodes",verb="PATCH"} 3
apiserver_request_total{code="409",resource="leases",verb="PUT"} 1
# TYPE apiserver_longrunning_requests gauge
apiserver_longrunning_requests{resource="pods",verb="WATCH"} 4
apiserver_longrunning_requests{resource="nodes",verb="WATCH"} 2
apiserver_longrunning_requests{resource="pods",verb="LIST"} 1
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Sum("apiserver_request_total", nil); got != 16 {
		t.Errorf("Sum of all requests = %v, want 16", got)
	}
	if got := m.Sum("apiserver_request_total", map[string]string{"resource": "leases"}); got != 13 {
		t.Errorf("Sum of lease requests = %v, want 13", got)
	}
	by := m.By("apiserver_longrunning_requests", "resource", map[string]string{"verb": "WATCH"})
	if len(by) != 2 || by["pods"] != 4 || by["nodes"] != 2 {
		t.Errorf("watches by resource = %v, want pods 4, nodes 2", by)
	}
	reqs := m.ByLabels("apiserver_request_total", []string{"verb", "resource"}, map[string]string{"code": "200"})
	if len(reqs) != 2 || reqs["PUT leases"] != 12 || reqs["PATCH nodes"] != 3 {
		t.Errorf("requests by verb and resource = %v, want PUT leases 12, PATCH nodes 3", reqs)
	}
	if got := m.Sum("no_such_metric", nil); got != 0 {
		t.Errorf("Sum of a missing family = %v, want 0", got)
	}
}
