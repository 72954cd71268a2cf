package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

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
