package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	corev1 "k8s.io/api/core/v1"

	admissiongatewayv1 "github.com/piggysec/piggy/libs/gen/piggy/admissiongateway/v1"
	"github.com/piggysec/piggy/libs/proctest"
)

// The faults issue's shutdown experiment for the gateway's two servers: 16
// callers, one connection each, call in a loop while the gateway gets
// SIGTERM; a request the gateway accepted must get its full answer, only
// requests it never accepted may fail (proctest.NeverAccepted says which:
// a refused dial once the listener is closed, or for gRPC a stream the
// server never saw). Two rounds each, since one round may miss the window.
// The pod has a command and only piggy: values, so a review needs neither
// the image-resolver nor the Kubernetes API: what is measured is the
// gateway's own shutdown.

const sigtermCallers = 16

// sigtermPod is reviewed and explained by the shutdown tests: it is
// mutated (the patch is the answer checked).
func sigtermPod() *corev1.Pod {
	return appPod("team", "app", map[string]string{"piggysec.com/aws-secret-name": "team/app"},
		corev1.Container{Name: "app", Image: "registry.example/app:1", Command: []string{"/app"}, Env: env("A", "piggy:A")})
}

// startSIGTERMGateway starts bin with a generous shutdown grace and no
// reachable API server (the pod needs none).
func startSIGTERMGateway(t *testing.T, bin string) *stack {
	t.Helper()
	s := &stack{pki: proctest.NewPKI(t)}
	s.gateway = proctest.Start(t, bin, append(s.pki.TLSArgs(), "--listen-address=127.0.0.1:0", "--grpc-address=127.0.0.1:0",
		"--metrics-address=127.0.0.1:0", "--kubeconfig", proctest.UnreachableKubeconfig(t), "--shutdown-grace=10s"),
		[]string{"PIGGY_ADDRESS=" + brokerURL})
	s.webhook = s.gateway.Addresses(t, "webhook")["webhook"]
	return s
}

// TestSIGTERMLosesNoAcceptedReview: the webhook's POST /mutate over
// HTTPS (HTTP/2, as the kube-apiserver speaks it). An accepted review must
// be answered with the patch.
func TestSIGTERMLosesNoAcceptedReview(t *testing.T) {
	bin := proctest.Build(t, ".")
	pod := sigtermPod()
	for round := range 2 {
		t.Run(fmt.Sprintf("round %d", round+1), func(t *testing.T) {
			s := startSIGTERMGateway(t, bin)
			proctest.UnderSIGTERM(t, s.gateway, sigtermCallers, func() (func() error, func()) {
				client := s.peerClient(30 * time.Second)
				return func() error {
					resp, err := s.forge(context.Background(), client, "team", pod)
					switch {
					case err != nil:
						return err
					case !resp.Allowed || len(resp.Patch) == 0:
						return fmt.Errorf("review answered allowed=%v with a %d-byte patch: %+v", resp.Allowed, len(resp.Patch), resp.Result)
					}
					return nil
				}, client.CloseIdleConnections
			})
		})
	}
}

// TestSIGTERMLosesNoAcceptedExplainPod: the diagnostics gRPC server's
// ExplainPod, called as an operator over mTLS. An RPC the server handled
// must return OK with the patch.
func TestSIGTERMLosesNoAcceptedExplainPod(t *testing.T) {
	bin := proctest.Build(t, ".")
	podJSON, err := json.Marshal(sigtermPod())
	if err != nil {
		t.Fatal(err)
	}
	req := &admissiongatewayv1.ExplainPodRequest{Namespace: "team", PodJson: string(podJSON)}
	for round := range 2 {
		t.Run(fmt.Sprintf("round %d", round+1), func(t *testing.T) {
			s := startSIGTERMGateway(t, bin)
			addr := s.gateway.Addresses(t, "grpc")["grpc"]
			proctest.UnderSIGTERM(t, s.gateway, sigtermCallers, func() (func() error, func()) {
				conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(s.pki.Client.ClientConfig("127.0.0.1"))))
				if err != nil {
					t.Fatal(err)
				}
				client := admissiongatewayv1.NewAdmissionGatewayServiceClient(conn)
				return func() error {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					resp, err := client.ExplainPod(ctx, req)
					switch {
					case err != nil:
						return err
					case !resp.GetAllowed() || resp.GetPatchJson() == "":
						return errors.New("ExplainPod answered without a patch: " + resp.GetDeniedReason())
					}
					return nil
				}, func() { _ = conn.Close() }
			})
		})
	}
}
