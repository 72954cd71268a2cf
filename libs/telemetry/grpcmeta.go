package telemetry

import (
	"context"

	"go.opentelemetry.io/otel"
	"google.golang.org/grpc/metadata"
)

// OutgoingGRPC returns ctx with its trace context (W3C traceparent and
// baggage, written by the global propagator) added to the outgoing gRPC
// metadata, so that the server's span joins the caller's trace. It is for
// client interceptors that pass the trace on without otelgrpc's client
// stats handler.
func OutgoingGRPC(ctx context.Context) context.Context {
	md, _ := metadata.FromOutgoingContext(ctx)
	md = md.Copy()
	otel.GetTextMapPropagator().Inject(ctx, metadataCarrier(md))
	return metadata.NewOutgoingContext(ctx, md)
}

// metadataCarrier lets a propagator write gRPC metadata.
type metadataCarrier metadata.MD

// Get returns the first value of key.
func (c metadataCarrier) Get(key string) string {
	if v := metadata.MD(c).Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

// Set replaces the values of key.
func (c metadataCarrier) Set(key, value string) { metadata.MD(c).Set(key, value) }

// Keys lists the keys present.
func (c metadataCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}
