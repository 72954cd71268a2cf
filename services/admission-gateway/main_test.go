package main

import (
	"testing"

	"github.com/piggysec/piggy/libs/proctest"
)

func TestLifecycle(t *testing.T) {
	// The gateway builds its Kubernetes client at start but only calls the
	// API while reviewing pods.
	proctest.TestLifecycle(t, proctest.Service{
		Dir:   ".",
		GRPC:  map[string]string{"grpc": "grpc-address"},
		HTTPS: map[string]string{"webhook": "listen-address"},
		Args:  []string{"--kubeconfig", proctest.UnreachableKubeconfig(t)},
	})
}
