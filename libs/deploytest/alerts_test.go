package deploytest

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"
)

// ruleFile is the shape of alerts/piggy.rules.yaml (Prometheus rule groups).
type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert       string            `json:"alert"`
			Expr        string            `json:"expr"`
			For         string            `json:"for"`
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

// TestAlertsQueryExportedMetrics: every alert reads only metrics the
// services export (as the dashboards), has a severity, a summary and a
// description, and the chart renders exactly these groups as a
// PrometheusRule when prometheusRule.enabled is set (and none by default).
func TestAlertsQueryExportedMetrics(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(chartDir(), "alerts", "piggy.rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var rules ruleFile
	if err := yaml.UnmarshalStrict(raw, &rules); err != nil {
		t.Fatalf("alerts/piggy.rules.yaml: %v", err)
	}
	exported := exportedNames(t, serviceInstruments(t))
	exported["up"] = true // recorded by Prometheus for every scrape target
	seen := map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || seen[r.Alert] {
				t.Errorf("alert %q: empty or repeated name", r.Alert)
			}
			seen[r.Alert] = true
			if !slices.Contains([]string{"critical", "warning", "info"}, r.Labels["severity"]) {
				t.Errorf("%s: severity %q, want critical, warning or info", r.Alert, r.Labels["severity"])
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: needs a summary and a description", r.Alert)
			}
			names := metricNames(r.Expr)
			if len(names) == 0 {
				t.Errorf("%s reads no metric: %s", r.Alert, r.Expr)
			}
			for _, n := range names {
				if !exported[n] {
					t.Errorf("%s reads %s, which no service exports\n  expr: %s", r.Alert, n, r.Expr)
				}
			}
		}
	}
	if len(seen) < 5 {
		t.Errorf("%d alerts, want the failure modes the dashboards show", len(seen))
	}

	if got := find(helmTemplate(t), "PrometheusRule", ""); len(got) != 0 {
		t.Errorf("%d PrometheusRules by default, want none (the CRD may be missing)", len(got))
	}
	objs := find(helmTemplate(t, "--set", "prometheusRule.enabled=true", "--set", "prometheusRule.labels.release=prometheus"), "PrometheusRule", "")
	if len(objs) != 1 {
		t.Fatalf("%d PrometheusRules with prometheusRule.enabled, want 1", len(objs))
	}
	if objs[0].GetLabels()["release"] != "prometheus" {
		t.Errorf("labels %v lack prometheusRule.labels", objs[0].GetLabels())
	}
	var want map[string]any
	if err := yaml.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want["groups"], objs[0].Object["spec"].(map[string]any)["groups"]); diff != "" {
		t.Errorf("rendered groups differ from alerts/piggy.rules.yaml (-file +rendered):\n%s", diff)
	}
}
