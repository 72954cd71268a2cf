package resolverclient

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	imageresolverv1 "github.com/piggysec/piggy/libs/gen/piggy/imageresolver/v1"
	"github.com/piggysec/piggy/libs/proctest"
	"github.com/piggysec/piggy/libs/serve"
	"github.com/piggysec/piggy/libs/tlsreload"
	"github.com/piggysec/piggy/services/admission-gateway/internal/mutate"
)

// resolver answers ResolveImage with a fixed response or error and keeps
// the span context the call arrived with.
type resolver struct {
	imageresolverv1.UnimplementedImageResolverServiceServer
	resp   *imageresolverv1.ResolveImageResponse
	err    error
	parent chan trace.SpanContext
	req    chan *imageresolverv1.ResolveImageRequest
}

func (r *resolver) ResolveImage(ctx context.Context, req *imageresolverv1.ResolveImageRequest) (*imageresolverv1.ResolveImageResponse, error) {
	r.parent <- trace.SpanFromContext(ctx).SpanContext()
	r.req <- req
	return r.resp, r.err
}

// traced records every span of this process, on the global provider the
// gateway uses, until the test ends.
func traced(t *testing.T) *tracetest.SpanRecorder {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	prevTP, prevProp := otel.GetTracerProvider(), otel.GetTextMapPropagator()
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	t.Cleanup(func() {
		_ = tp.Shutdown(context.Background())
		otel.SetTracerProvider(prevTP)
		otel.SetTextMapPropagator(prevProp)
	})
	return rec
}

// dial serves r over a real mTLS listener (the server stack every service
// uses, with its tracing) and returns a Client connected through Dial.
func dial(t *testing.T, r *resolver) *Client {
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
	imageresolverv1.RegisterImageResolverServiceServer(s, r)
	ln, err := serve.Listen(t.Context(), "grpc", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = serve.GRPC(ctx, s, h, ln, time.Second); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	conn, err := Dial(ln.Addr().String(), pki.Client.ClientConfig("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return New(imageresolverv1.NewImageResolverServiceClient(conn))
}

func newResolver(resp *imageresolverv1.ResolveImageResponse, err error) *resolver {
	return &resolver{resp: resp, err: err, parent: make(chan trace.SpanContext, 1), req: make(chan *imageresolverv1.ResolveImageRequest, 1)}
}

func TestResolveIsOneTracedCall(t *testing.T) {
	spans := traced(t)
	r := newResolver(&imageresolverv1.ResolveImageResponse{Digest: "sha256:abc", Entrypoint: []string{"/app"}, Cmd: []string{"serve"}}, nil)
	c := dial(t, r)

	ctx, review := otel.Tracer("test").Start(t.Context(), "review")
	got, err := c.Resolve(ctx, mutate.ImageLookup{
		Image: "registry.example/app:1", Namespace: "team", ServiceAccount: "web",
		PullSecrets: []mutate.SecretRef{{Namespace: "team", Name: "regcred"}}, OS: "linux", Arch: "arm64",
	})
	review.End()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(mutate.ImageConfig{Digest: "sha256:abc", Entrypoint: []string{"/app"}, Cmd: []string{"serve"}}, got); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	req := <-r.req
	if req.GetImage() != "registry.example/app:1" || req.GetNamespace() != "team" || req.GetServiceAccount() != "web" ||
		len(req.GetPullSecrets()) != 1 || req.GetPullSecrets()[0].GetName() != "regcred" ||
		req.GetPlatform().GetOs() != "linux" || req.GetPlatform().GetArchitecture() != "arm64" {
		t.Errorf("request = %v", req)
	}

	var client sdktrace.ReadOnlySpan
	for _, s := range spans.Ended() {
		if s.SpanKind() == trace.SpanKindClient {
			if client != nil {
				t.Fatalf("more than one client span")
			}
			client = s
		}
	}
	if client == nil {
		t.Fatal("no client span")
	}
	if client.Name() != "piggy.imageresolver.v1.ImageResolverService/ResolveImage" || client.Parent().SpanID() != review.SpanContext().SpanID() {
		t.Errorf("client span %q with parent %s, want a child of the review span %s", client.Name(), client.Parent().SpanID(), review.SpanContext().SpanID())
	}
	if client.Status().Code != otelcodes.Unset {
		t.Errorf("client span status = %v", client.Status())
	}
	// The resolver's server span continues the trace under the client span.
	if p := <-r.parent; p.TraceID() != review.SpanContext().TraceID() {
		t.Errorf("server span trace %s, want %s", p.TraceID(), review.SpanContext().TraceID())
	}
	for _, s := range spans.Ended() {
		if s.SpanKind() == trace.SpanKindServer && s.Parent().SpanID() != client.SpanContext().SpanID() {
			t.Errorf("server span parent %s, want the client span %s", s.Parent().SpanID(), client.SpanContext().SpanID())
		}
	}
}

func TestResolveErrors(t *testing.T) {
	spans := traced(t)
	tests := []struct {
		err  error
		want string
	}{
		{status.Error(codes.NotFound, "image registry.example/app:1 not found"), "image registry.example/app:1 not found"},
		{status.Error(codes.Unavailable, "registry down"), "image-resolver unavailable: registry down"},
		{status.Error(codes.DeadlineExceeded, "slow"), "image-resolver did not answer in time"},
	}
	for _, tt := range tests {
		t.Run(status.Code(tt.err).String(), func(t *testing.T) {
			c := dial(t, newResolver(nil, tt.err))
			_, err := c.Resolve(t.Context(), mutate.ImageLookup{Image: "registry.example/app:1", Namespace: "team"})
			if err == nil || err.Error() != tt.want {
				t.Errorf("error = %v, want %q", err, tt.want)
			}
		})
	}
	for _, s := range spans.Ended() {
		if s.SpanKind() == trace.SpanKindClient && s.Status().Code != otelcodes.Error {
			t.Errorf("client span %s status = %v, want an error", s.Name(), s.Status())
		}
	}
}
