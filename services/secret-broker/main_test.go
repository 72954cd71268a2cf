package main

import (
	"testing"

	"github.com/piggysec/piggy/libs/proctest"
)

func TestLifecycle(t *testing.T) {
	// The broker builds its Kubernetes client at start but only needs the
	// API to serve requests (its pod informer retries in the background).
	proctest.TestLifecycle(t, proctest.Service{
		Dir:   ".",
		GRPC:  map[string]string{"grpc": "grpc-address"},
		HTTPS: map[string]string{"gateway": "listen-address"},
		Args:  []string{"--kubeconfig", proctest.UnreachableKubeconfig(t)},
	})
}
