package main

import (
	"testing"

	secretbrokerv1 "github.com/piggysec/piggy/libs/gen/piggy/secretbroker/v1"
	"github.com/piggysec/piggy/libs/proctest"
)

func TestLifecycle(t *testing.T) {
	// The broker builds its Kubernetes client at start but only needs the
	// API to serve requests (its pod informer retries in the background).
	proctest.TestLifecycle(t, proctest.Service{
		Dir:   ".",
		GRPC:  map[string]string{"grpc": "grpc-address"},
		HTTPS: map[string]string{"gateway": "listen-address"},
		// --once-per-start (the default) keeps its claims in the broker's
		// namespace, the in-cluster one unless given.
		Args: []string{"--kubeconfig", proctest.UnreachableKubeconfig(t), "--pod-namespace", "piggy-system"},
		Callers: map[string]map[string]proctest.Caller{"grpc": {
			// GetSecrets authenticates by the pod token in the request.
			secretbrokerv1.SecretBrokerService_GetSecrets_FullMethodName:    proctest.AnyClient,
			secretbrokerv1.SecretBrokerService_ExplainAccess_FullMethodName: proctest.Operator,
			secretbrokerv1.SecretBrokerService_GetCacheStats_FullMethodName: proctest.Operator,
		}},
	})
}
