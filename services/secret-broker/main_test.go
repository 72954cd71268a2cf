package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/piggysec/piggy/libs/proctest"
)

func TestLifecycle(t *testing.T) {
	// The broker builds its Kubernetes client at start but only needs the
	// API to serve requests (its pod informer retries in the background), so
	// a kubeconfig pointing nowhere will do.
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	const cfg = `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`
	if err := os.WriteFile(kubeconfig, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	proctest.TestLifecycle(t, proctest.Service{
		Dir:   ".",
		GRPC:  map[string]string{"grpc": "grpc-address"},
		HTTPS: map[string]string{"gateway": "listen-address"},
		Args:  []string{"--kubeconfig", kubeconfig},
	})
}
