package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"
)

// TestConvertRealisticValues converts a production install's values of
// piggy-webhooks and checks every mapped value and every note.
func TestConvertRealisticValues(t *testing.T) {
	old, err := os.ReadFile("testdata/piggy-webhooks-values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out, err := Convert(old, Options{OldAddress: "https://piggy-webhooks.piggy-webhooks.svc.cluster.local", CutOver: true, KeepOldAddress: true})
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := yaml.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("output is not YAML: %v\n%s", err, out)
	}
	perService := func(v any) map[string]any {
		return map[string]any{"replicaCount": 2.0, "nodeSelector": map[string]any{"kubernetes.io/os": "linux"}, "podAnnotations": map[string]any{"prometheus.io/scrape": "false"}, "resources": v, "serviceAccount": map[string]any{"create": true}}
	}
	res := map[string]any{"requests": map[string]any{"cpu": "100m", "memory": "128Mi"}}
	gw, resolver, broker := perService(res), perService(res), perService(res)
	gw["allowedPiggyAddresses"] = []any{"https://piggy-webhooks.piggy-webhooks.svc.cluster.local"}
	broker["legacySecretEndpoint"] = true
	broker["aws"] = map[string]any{"roleArn": "arn:aws:iam::123456789012:role/piggy-webhooks-role"}
	broker["tls"] = map[string]any{"extraDnsNames": []any{"piggy-webhooks.piggy-webhooks.svc.cluster.local"}}
	want := map[string]any{
		"global": map[string]any{
			"image":            map[string]any{"pullPolicy": "IfNotPresent"},
			"imagePullSecrets": []any{"regcred"},
			"podDefaults": map[string]any{
				"aws-region": "ap-southeast-1", "piggy-enforce-service-account": "true",
				"piggy-number-of-retry": "3", "piggy-initial-delay": "2s", "piggy-env-image-pull-policy": "IfNotPresent",
			},
			"tls": map[string]any{"mode": "generated", "generated": map[string]any{"certValidityDays": 365.0}},
		},
		"webhook": map[string]any{
			"timeoutSeconds": 10.0, "failurePolicy": "Ignore", "reinvocationPolicy": "IfNeeded",
			"excludeNamespaces": []any{"monitoring"},
			"objectSelector":    map[string]any{"matchExpressions": []any{map[string]any{"key": "piggysec.com/skip", "operator": "DoesNotExist"}}},
			"namespaceSelector": map[string]any{"matchLabels": map[string]any{"piggysec.com/webhook": "piggy"}},
		},
		"admission-gateway": gw, "image-resolver": resolver, "secret-broker": broker,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("converted values (-want +got):\n%s\n%s", diff, out)
	}
	for _, note := range []string{
		"replicaCount 1: each service runs at least 2 replicas",
		"image.repository/tag: no equivalent",
		"podSecurityContext runAsUser 10001: dropped",
		"resources were copied to every service",
		"env PIGGY_NUMBER_OF_RETRY=3 keeps its meaning",
		"mutate.podsFailurePolicy Ignore kept",
		"mutate.matchConditions: no equivalent for custom CEL",
		"mutate.certificate.certManager.privateKey",
		"mutate.image (the original piggy-env ghcr.io/kongz/piggy-env:0.7.0): no equivalent",
	} {
		if note == "mutate.certificate.certManager.privateKey" {
			// Only with cert-manager on: the original ignores the key settings otherwise.
			if strings.Contains(out, note) {
				t.Errorf("a note about %s with cert-manager off:\n%s", note, out)
			}
			continue
		}
		if !strings.Contains(out, "#   - "+note) {
			t.Errorf("no comment %q in:\n%s", note, out)
		}
	}
}

// TestConvertWithoutCutOver leaves the cut-over settings out, and maps
// cert-manager, fullnameOverride and unknown keys.
func TestConvertWithoutCutOver(t *testing.T) {
	out, err := Convert([]byte(`
fullnameOverride: piggy
mutate:
  certificate: {certManager: {enabled: true}, certValidity: 90}
  podsFailurePolicy: Fail
env: {DEBUG: "true", PIGGY_SKIP_VERIFY_TLS: "false", SOMETHING: x}
colour: blue
`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := yaml.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"global": map[string]any{
			"fullnameOverride": "piggy", "debug": true,
			"tls": map[string]any{"mode": "cert-manager", "certManager": map[string]any{"duration": "2160h"}},
		},
		"webhook": map[string]any{"failurePolicy": "Fail"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("converted values (-want +got):\n%s", diff)
	}
	for _, note := range []string{"colour: not a value of piggy-webhooks", "env SOMETHING: not a setting", "env PIGGY_SKIP_VERIFY_TLS: no equivalent", "prefix of <prefix>-<component> names"} {
		if !strings.Contains(out, note) {
			t.Errorf("no comment %q in:\n%s", note, out)
		}
	}
	if _, err := Convert(nil, Options{KeepOldAddress: true}); err == nil {
		t.Error("-keep-old-address without an address converted without an error")
	}
	if _, err := Convert([]byte("replicaCount: [1"), Options{}); err == nil {
		t.Error("broken YAML converted without an error")
	}
}

// TestConvertedValuesRender renders charts/piggy with the converted values:
// the chart's schemas accept them and the webhook takes only the labelled
// namespaces. It needs helm (make chart-tools).
func TestConvertedValuesRender(t *testing.T) {
	helm := os.Getenv("PIGGY_HELM")
	if helm == "" {
		helm = filepath.Join("..", "..", "..", ".cache", "tools", "bin", "helm")
	}
	if _, err := os.Stat(helm); err != nil {
		t.Skipf("helm not installed (%v): run make chart-tools", err)
	}
	var stdout bytes.Buffer
	if err := run([]string{"-keep-old-address", "testdata/piggy-webhooks-values.yaml"}, nil, &stdout); err != nil {
		t.Fatal(err)
	}
	values := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(values, stdout.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(helm, "template", "piggy", filepath.Join("..", "..", "..", "charts", "piggy"), "-n", "piggy", "--kube-version", "1.33.0", "-f", values)
	rendered, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helm template with the converted values: %v\n%s", err, rendered)
	}
	for _, want := range []string{"piggysec.com/webhook: piggy", "--legacy-secret-endpoint", "piggy-webhooks.piggy-webhooks.svc.cluster.local"} {
		if !strings.Contains(string(rendered), want) {
			t.Errorf("rendered chart lacks %q", want)
		}
	}
}
