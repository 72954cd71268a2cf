package main

import (
	"testing"

	admissiongatewayv1 "github.com/piggysec/piggy/libs/gen/piggy/admissiongateway/v1"
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
		Callers: map[string]map[string]proctest.Caller{"grpc": {
			admissiongatewayv1.AdmissionGatewayService_ExplainPod_FullMethodName: proctest.Operator,
		}},
	})
}
