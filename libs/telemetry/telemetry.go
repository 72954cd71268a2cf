// Package telemetry sets up OpenTelemetry traces and metrics for a Piggy
// service from the standard OTEL_* environment variables.
//
// Traces and metrics are exported over OTLP only when an endpoint is
// configured (OTEL_EXPORTER_OTLP_ENDPOINT or the signal-specific
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_METRICS_ENDPOINT);
// OTEL_EXPORTER_OTLP_PROTOCOL (or the signal-specific variant) chooses
// "http/protobuf" (the default) or "grpc". OTEL_TRACES_EXPORTER=none and
// OTEL_METRICS_EXPORTER=none switch the OTLP exporters off, and
// OTEL_SDK_DISABLED=true switches everything off. Metrics are always
// available for Prometheus to scrape through Telemetry.MetricsHandler.
// The W3C trace context and baggage propagators are installed globally.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// Options configures Setup.
type Options struct {
	// ServiceName is the default service.name (OTEL_SERVICE_NAME wins).
	ServiceName string
	// Version is service.version.
	Version string
	// Getenv reads configuration; os.Getenv in production.
	Getenv func(string) string
}

// Telemetry holds the providers of one process.
type Telemetry struct {
	// TracerProvider creates tracers; also installed as the global one.
	TracerProvider trace.TracerProvider
	// MeterProvider creates meters; also installed as the global one.
	MeterProvider metric.MeterProvider
	// MetricsHandler serves the Prometheus exposition of all metrics.
	MetricsHandler http.Handler
	// Exporting says which signals are exported over OTLP.
	Exporting struct{ Traces, Metrics bool }

	shutdown []func(context.Context) error
}

// Setup builds the providers, installs them and the W3C propagators
// globally, and returns them with one Shutdown. Exporters connect lazily, so
// an unreachable collector does not fail Setup.
func Setup(ctx context.Context, opts Options) (*Telemetry, error) {
	getenv := opts.Getenv
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))

	t := &Telemetry{}
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		t.TracerProvider = tracenoop.NewTracerProvider()
		t.MeterProvider = metricnoop.NewMeterProvider()
		t.MetricsHandler = http.NotFoundHandler()
		return t, nil
	}

	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(opts.ServiceName), semconv.ServiceVersion(opts.Version)),
		resource.WithFromEnv(),
		resource.WithTelemetrySDK(),
		resource.WithProcessPID(),
		resource.WithHost(),
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("telemetry: resource: %w", err)
	}

	tpOpts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if exporting(getenv, "TRACES") {
		exp, err := traceExporter(ctx, protocol(getenv, "TRACES"), endpoint(getenv, "TRACES"))
		if err != nil {
			return nil, err
		}
		tpOpts = append(tpOpts, sdktrace.WithBatcher(exp))
		t.Exporting.Traces = true
	} else {
		// Nothing would read the spans: keep trace and span IDs (logs and
		// propagation still carry them) but record nothing, which saves
		// every instrumented request the cost of building a span.
		tpOpts = append(tpOpts, sdktrace.WithSampler(sdktrace.NeverSample()))
	}
	tp := sdktrace.NewTracerProvider(tpOpts...)
	t.shutdown = append(t.shutdown, tp.Shutdown)
	t.TracerProvider = tp

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	promReader, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, fmt.Errorf("telemetry: prometheus exporter: %w", err)
	}
	mpOpts := []sdkmetric.Option{sdkmetric.WithResource(res), sdkmetric.WithReader(promReader)}
	if exporting(getenv, "METRICS") {
		exp, err := metricExporter(ctx, protocol(getenv, "METRICS"), endpoint(getenv, "METRICS"))
		if err != nil {
			return nil, err
		}
		mpOpts = append(mpOpts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp)))
		t.Exporting.Metrics = true
	}
	mp := sdkmetric.NewMeterProvider(mpOpts...)
	t.shutdown = append(t.shutdown, mp.Shutdown)
	t.MeterProvider = mp
	t.MetricsHandler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})

	otel.SetTracerProvider(tp)
	otel.SetMeterProvider(mp)
	return t, nil
}

// Shutdown flushes and stops the exporters; call it once, with a bounded
// context, after the servers have stopped.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var errs []error
	for _, f := range t.shutdown {
		errs = append(errs, f(ctx))
	}
	return errors.Join(errs...)
}

// exporting reports whether OTLP export of signal ("TRACES" or "METRICS") is
// configured: an endpoint is set and the exporter is not "none".
func exporting(getenv func(string) string, signal string) bool {
	if v := strings.TrimSpace(getenv("OTEL_" + signal + "_EXPORTER")); v != "" && !strings.EqualFold(v, "otlp") {
		return false
	}
	return getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_"+signal+"_ENDPOINT") != ""
}

func protocol(getenv func(string) string, signal string) string {
	if p := getenv("OTEL_EXPORTER_OTLP_" + signal + "_PROTOCOL"); p != "" {
		return p
	}
	if p := getenv("OTEL_EXPORTER_OTLP_PROTOCOL"); p != "" {
		return p
	}
	return "http/protobuf"
}

// endpoint returns the OTLP endpoint URL of signal and whether it is the
// general one (OTEL_EXPORTER_OTLP_ENDPOINT), to which OTLP/HTTP appends the
// signal's path.
func endpoint(getenv func(string) string, signal string) otlpEndpoint {
	if e := getenv("OTEL_EXPORTER_OTLP_" + signal + "_ENDPOINT"); e != "" {
		return otlpEndpoint{url: e}
	}
	return otlpEndpoint{url: getenv("OTEL_EXPORTER_OTLP_ENDPOINT"), general: true}
}

type otlpEndpoint struct {
	url     string
	general bool
}

// httpURL is the URL an OTLP/HTTP exporter posts path to.
func (e otlpEndpoint) httpURL(path string) string {
	if e.general {
		return strings.TrimSuffix(e.url, "/") + path
	}
	return e.url
}

// The endpoint comes from Getenv; the OTLP exporters read the remaining
// settings (headers, TLS files, timeouts, compression) from the process's
// OTEL_EXPORTER_OTLP_* variables themselves.
func traceExporter(ctx context.Context, proto string, ep otlpEndpoint) (sdktrace.SpanExporter, error) {
	switch proto {
	case "grpc":
		return otlptracegrpc.New(ctx, otlptracegrpc.WithEndpointURL(ep.url))
	case "http/protobuf":
		return otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(ep.httpURL("/v1/traces")))
	default:
		return nil, fmt.Errorf("telemetry: unsupported OTLP protocol %q (want grpc or http/protobuf)", proto)
	}
}

func metricExporter(ctx context.Context, proto string, ep otlpEndpoint) (sdkmetric.Exporter, error) {
	switch proto {
	case "grpc":
		return otlpmetricgrpc.New(ctx, otlpmetricgrpc.WithEndpointURL(ep.url))
	case "http/protobuf":
		return otlpmetrichttp.New(ctx, otlpmetrichttp.WithEndpointURL(ep.httpURL("/v1/metrics")))
	default:
		return nil, fmt.Errorf("telemetry: unsupported OTLP protocol %q (want grpc or http/protobuf)", proto)
	}
}
