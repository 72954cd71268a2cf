// Package resolverclient calls the image-resolver over mTLS gRPC for the
// mutation's ImageConfigResolver.
package resolverclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	imageresolverv1 "github.com/piggysec/piggy/libs/gen/piggy/imageresolver/v1"
	"github.com/piggysec/piggy/libs/serve"
	"github.com/piggysec/piggy/libs/telemetry"
	"github.com/piggysec/piggy/services/admission-gateway/internal/mutate"
)

// windowSize is the HTTP/2 flow-control window of the connection and of each
// stream. Lookups are a few hundred bytes each way; a fixed window this size
// never stalls them, and setting one turns off gRPC's bandwidth estimation,
// which otherwise sends a ping (and the resolver an acknowledgement) for
// most calls.
const windowSize = 1 << 20

// TracerName is the instrumentation scope of the client spans.
const TracerName = "github.com/piggysec/piggy/services/admission-gateway/internal/resolverclient"

// Dial returns a connection to the image-resolver at addr over mTLS (tlsConfig
// carries the client certificate) whose calls are traced with the global
// OpenTelemetry tracer provider and propagator, and that reconnects to a
// resolver that was down within serve.MaxReconnectDelay. It does not
// connect until the first call.
func Dial(addr string, tlsConfig *tls.Config) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr, append(serve.ClientDialOptions(),
		grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig)),
		grpc.WithUnaryInterceptor(traceCalls(otel.Tracer(TracerName))),
		grpc.WithInitialWindowSize(windowSize),
		grpc.WithInitialConnWindowSize(windowSize))...)
}

// traceCalls returns an interceptor that wraps each call in a client span
// and passes the span's context to the resolver in the request metadata
// (W3C traceparent and baggage), so that the resolver's server span joins
// the review's trace. Unlike the otelgrpc stats handler it records no
// client metrics and no per-message events: the resolver's server metrics
// cover the call, and those extras cost a sixth of a warm lookup.
func traceCalls(tracer trace.Tracer) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		name := strings.TrimPrefix(method, "/")
		ctx, span := tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient))
		defer span.End()
		err := invoker(telemetry.OutgoingGRPC(ctx), method, req, reply, cc, opts...)
		if span.IsRecording() {
			service, rpc, _ := strings.Cut(name, "/")
			st := status.Convert(err)
			span.SetAttributes(
				attribute.String("rpc.system", "grpc"),
				attribute.String("rpc.service", service),
				attribute.String("rpc.method", rpc),
				attribute.String("server.address", cc.Target()),
				attribute.Int("rpc.grpc.status_code", int(st.Code())),
			)
			if err != nil {
				span.SetStatus(otelcodes.Error, st.Message())
			}
		}
		return err
	}
}

// Client adapts the generated client.
type Client struct {
	rpc imageresolverv1.ImageResolverServiceClient
}

// New returns a Client on a connection the caller owns.
func New(rpc imageresolverv1.ImageResolverServiceClient) *Client { return &Client{rpc: rpc} }

// Resolve asks the image-resolver for the image's ENTRYPOINT and CMD. Errors
// carry the resolver's message, which names no credential.
func (c *Client) Resolve(ctx context.Context, l mutate.ImageLookup) (mutate.ImageConfig, error) {
	req := &imageresolverv1.ResolveImageRequest{
		Image:          l.Image,
		Namespace:      l.Namespace,
		ServiceAccount: l.ServiceAccount,
		SkipTlsVerify:  l.SkipTLSVerify,
	}
	for _, s := range l.PullSecrets {
		req.PullSecrets = append(req.PullSecrets, &imageresolverv1.SecretReference{Namespace: s.Namespace, Name: s.Name})
	}
	if l.OS != "" || l.Arch != "" {
		req.Platform = &imageresolverv1.Platform{Os: l.OS, Architecture: l.Arch}
	}
	resp, err := c.rpc.ResolveImage(ctx, req)
	if err != nil {
		st := status.Convert(err)
		switch st.Code() {
		case codes.DeadlineExceeded:
			return mutate.ImageConfig{}, fmt.Errorf("image-resolver did not answer in time")
		case codes.Unavailable:
			if serve.IsTransportFailure(err) {
				// grpc-go's text names the resolver's address.
				return mutate.ImageConfig{}, errors.New("image-resolver unavailable: it could not be reached")
			}
			return mutate.ImageConfig{}, fmt.Errorf("image-resolver unavailable: %s", st.Message())
		default:
			return mutate.ImageConfig{}, fmt.Errorf("%s", st.Message())
		}
	}
	return mutate.ImageConfig{Digest: resp.GetDigest(), Entrypoint: resp.GetEntrypoint(), Cmd: resp.GetCmd()}, nil
}
