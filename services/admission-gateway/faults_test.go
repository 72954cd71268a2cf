package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/piggysec/piggy/libs/proctest"
	"github.com/piggysec/piggy/libs/registrytest"
)

// TestStalledAPIServerGetsAClearDenial is the faults issue's stalled API
// server: the gateway's ConfigMap reads hang (its API endpoint accepts
// connections and never answers). A pod whose env comes from a ConfigMap,
// created through the real apiserver, is denied by the gateway itself,
// well inside the webhook timeout, with a message that says what failed
// and names no internal address, instead of the API server's generic
// webhook timeout.
func TestStalledAPIServerGetsAClearDenial(t *testing.T) {
	stalled := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(stalled, fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters: [{name: stalled, cluster: {server: "http://%s"}}]
users: [{name: stalled, user: {}}]
contexts: [{name: stalled, context: {cluster: stalled, user: stalled}}]
current-context: stalled
`, registrytest.Blackhole(t)), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startStack(t, "stalled", "", "--kubeconfig", stalled)
	ns := s.namespace(t, nil)
	pod := appPod(ns, "app", map[string]string{"piggysec.com/aws-secret-name": "team/app"}, corev1.Container{
		Image: "registry.example/app:1", Command: []string{"/app"},
		Env: []corev1.EnvVar{{Name: "A", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}, Key: "A"}}}},
	})
	start := time.Now()
	_, err := s.create(t, pod)
	took := time.Since(start)
	want := `denied the request: container "app": env A: read ConfigMap ` + ns + `/settings: the Kubernetes API did not answer in time`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("pod with a stalled API behind its ConfigMap: %v (after %s), want %q", err, took, want)
	}
	if strings.Contains(err.Error(), "127.0.0.1") {
		t.Errorf("the denial names an internal address: %v", err)
	}
	t.Logf("denied after %s", took.Round(10*time.Millisecond))
}

// TestBrokerCABundleIsReloaded: the broker CA bundle the gateway gives
// pods is re-read like its TLS files, so a rotated broker CA reaches the
// pods admitted after the rotation without a gateway restart (before, it
// was read once at start).
func TestBrokerCABundleIsReloaded(t *testing.T) {
	dir := t.TempDir()
	bundle := filepath.Join(dir, "broker-ca.crt")
	first, second := proctest.NewPKI(t), proctest.NewPKI(t)
	if err := os.WriteFile(bundle, first.CA.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "http://%s"}}]
users: [{name: none, user: {}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
`, registrytest.ClosedPort(t)), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &stack{pki: proctest.NewPKI(t)}
	s.gateway = proctest.Start(t, proctest.Build(t, "."), append(s.pki.TLSArgs(), "--listen-address=127.0.0.1:0", "--grpc-address=127.0.0.1:0",
		"--metrics-address=127.0.0.1:0", "--kubeconfig", kubeconfig, "--broker-ca-file", bundle, "--tls-reload-interval=200ms"),
		[]string{"PIGGY_ADDRESS=" + brokerURL})
	s.webhook = s.gateway.Addresses(t, "webhook")["webhook"]
	pod := appPod("team", "app", map[string]string{"piggysec.com/aws-secret-name": "team/app"},
		corev1.Container{Image: "registry.example/app:1", Command: []string{"/app"}, Env: env("A", "piggy:A")})
	bundleOf := func() string {
		t.Helper()
		resp, err := s.forge(t.Context(), s.peerClient(5*time.Second), "team", pod)
		if err != nil || !resp.Allowed {
			t.Fatalf("review: %v %+v", err, resp)
		}
		var ops []struct {
			Path  string          `json:"path"`
			Value json.RawMessage `json:"value"`
		}
		if err := json.Unmarshal(resp.Patch, &ops); err != nil {
			t.Fatal(err)
		}
		for _, op := range ops {
			var c corev1.Container
			if strings.HasPrefix(op.Path, "/spec/initContainers") && json.Unmarshal(op.Value, &c) == nil && c.Name == "install-piggy-env" {
				return envOf(c, "PIGGY_CA_BUNDLE")
			}
			var cs []corev1.Container
			if op.Path == "/spec/initContainers" && json.Unmarshal(op.Value, &cs) == nil {
				for _, c := range cs {
					if c.Name == "install-piggy-env" {
						return envOf(c, "PIGGY_CA_BUNDLE")
					}
				}
			}
		}
		t.Fatalf("no install container in the patch %s", resp.Patch)
		return ""
	}
	if got := bundleOf(); got != string(first.CA.CertPEM) {
		t.Fatalf("bundle before the rotation is not the file's")
	}
	if err := os.WriteFile(bundle, second.CA.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for bundleOf() != string(second.CA.CertPEM) {
		if time.Now().After(deadline) {
			t.Fatal("the rotated broker CA did not reach new pods within 10s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
