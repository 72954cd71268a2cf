package grpcapi

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	admissiongatewayv1 "github.com/piggysec/piggy/libs/gen/piggy/admissiongateway/v1"
	"github.com/piggysec/piggy/libs/proctest"
	"github.com/piggysec/piggy/libs/serve"
	"github.com/piggysec/piggy/libs/tlsreload"
	"github.com/piggysec/piggy/services/admission-gateway/internal/mutate"
)

type noImages struct{}

func (noImages) Resolve(context.Context, mutate.ImageLookup) (mutate.ImageConfig, error) {
	return mutate.ImageConfig{}, context.DeadlineExceeded
}

type noEnv struct{}

func (noEnv) ConfigMap(context.Context, string, string) (map[string]string, error) {
	return nil, mutate.ErrNotFound
}
func (noEnv) Secret(context.Context, string, string) (map[string]string, error) {
	return nil, mutate.ErrNotFound
}

// client serves the API over a real mTLS listener.
func client(t *testing.T) admissiongatewayv1.AdmissionGatewayServiceClient {
	t.Helper()
	pki := proctest.NewPKI(t)
	src, err := tlsreload.Load(pki.Service)
	if err != nil {
		t.Fatal(err)
	}
	s, h, err := serve.NewGRPCServer(serve.GRPCOptions{TLS: src.ServerConfig(true), Callers: serve.AnyVerifiedClient()})
	if err != nil {
		t.Fatal(err)
	}
	admissiongatewayv1.RegisterAdmissionGatewayServiceServer(s, New(mutate.New(mutate.Config{AllowedAddresses: []string{"https://broker:8443"}, EnvImage: "e"}, noImages{}, noEnv{})))
	ln, err := serve.Listen(t.Context(), "grpc", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = serve.GRPC(ctx, s, h, ln, time.Second); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(pki.Client.ClientConfig("127.0.0.1"))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return admissiongatewayv1.NewAdmissionGatewayServiceClient(conn)
}

func TestExplainPod(t *testing.T) {
	c := client(t)
	tests := []struct {
		name        string
		req         *admissiongatewayv1.ExplainPodRequest
		wantCode    codes.Code
		wantAllowed bool
		wantPatch   bool
		wantText    string
	}{
		{
			name: "mutated",
			req: &admissiongatewayv1.ExplainPodRequest{Namespace: "team", PodJson: `{"metadata": {"name": "web", "annotations": {"piggysec.com/piggy-address": "https://broker:8443"}},
				"spec": {"containers": [{"name": "app", "image": "i", "command": ["/a"], "env": [{"name": "A", "value": "piggy:A"}]}]}}`},
			wantAllowed: true, wantPatch: true,
		},
		{
			name: "denied with the reason",
			req: &admissiongatewayv1.ExplainPodRequest{Namespace: "team", PodJson: `{"metadata": {"name": "web", "annotations": {"piggysec.com/piggy-address": "https://broker:8443"}},
				"spec": {"containers": [{"name": "app", "image": "reg/app:1", "env": [{"name": "A", "value": "piggy:A"}]}]}}`},
			wantText: `container "app" has no command`,
		},
		{
			name:        "nothing to do",
			req:         &admissiongatewayv1.ExplainPodRequest{PodJson: `{"metadata": {"name": "web", "namespace": "team"}, "spec": {"containers": [{"name": "app", "image": "i"}]}}`},
			wantAllowed: true,
		},
		{name: "not a pod", req: &admissiongatewayv1.ExplainPodRequest{Namespace: "team", PodJson: `[1]`}, wantCode: codes.InvalidArgument},
		{name: "no namespace", req: &admissiongatewayv1.ExplainPodRequest{PodJson: `{"metadata": {"name": "x"}}`}, wantCode: codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := c.ExplainPod(t.Context(), tt.req)
			if status.Code(err) != tt.wantCode {
				t.Fatalf("code = %v (%v), want %v", status.Code(err), err, tt.wantCode)
			}
			if err != nil {
				return
			}
			if resp.GetAllowed() != tt.wantAllowed || (resp.GetPatchJson() != "") != tt.wantPatch {
				t.Errorf("response = %v", resp)
			}
			if tt.wantText != "" && !strings.Contains(resp.GetDeniedReason(), tt.wantText) {
				t.Errorf("denied reason %q lacks %q", resp.GetDeniedReason(), tt.wantText)
			}
		})
	}
}
