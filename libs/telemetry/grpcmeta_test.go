package telemetry

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"
)

func TestOutgoingGRPCKeepsMetadataAndAddsTheTrace(t *testing.T) {
	prev := otel.GetTextMapPropagator()
	otel.SetTextMapPropagator(propagation.TraceContext{})
	t.Cleanup(func() { otel.SetTextMapPropagator(prev) })

	traceID, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	spanID, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: traceID, SpanID: spanID, TraceFlags: trace.FlagsSampled}))
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer t")
	before, _ := metadata.FromOutgoingContext(ctx)

	md, _ := metadata.FromOutgoingContext(OutgoingGRPC(ctx))
	if got := md.Get("traceparent"); len(got) != 1 || got[0] != "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" {
		t.Errorf("traceparent = %q", got)
	}
	if got := md.Get("authorization"); len(got) != 1 || got[0] != "Bearer t" {
		t.Errorf("authorization = %q, want it kept", got)
	}
	if len(before.Get("traceparent")) != 0 {
		t.Error("the caller's metadata was changed")
	}
}
