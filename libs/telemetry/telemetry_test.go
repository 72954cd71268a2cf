package telemetry_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/piggysec/piggy/libs/telemetry"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// collector records the paths of OTLP/HTTP requests it receives.
type collector struct {
	mu    sync.Mutex
	paths map[string]int
}

func (c *collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	c.mu.Lock()
	c.paths[r.URL.Path]++
	c.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-protobuf")
}

func (c *collector) count(path string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.paths[path]
}

func TestOTLPExportWhenEndpointSet(t *testing.T) {
	col := &collector{paths: map[string]int{}}
	srv := httptest.NewServer(col)
	defer srv.Close()

	tel, err := telemetry.Setup(t.Context(), telemetry.Options{
		ServiceName: "test-service",
		Getenv:      env(map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": srv.URL}),
	})
	if err != nil {
		t.Fatal(err)
	}
	if !tel.Exporting.Traces || !tel.Exporting.Metrics {
		t.Fatalf("Exporting = %+v, want traces and metrics", tel.Exporting)
	}
	_, span := tel.TracerProvider.Tracer("test").Start(context.Background(), "op")
	span.End()
	counter, err := tel.MeterProvider.Meter("test").Int64Counter("piggy_test_total")
	if err != nil {
		t.Fatal(err)
	}
	counter.Add(context.Background(), 3)

	if err := tel.Shutdown(t.Context()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if col.count("/v1/traces") == 0 || col.count("/v1/metrics") == 0 {
		t.Errorf("collector saw %v, want /v1/traces and /v1/metrics", col.paths)
	}
}

func TestNoExportWithoutEndpoint(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
	}{
		{"no endpoint", nil},
		{"exporter none", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tel, err := telemetry.Setup(t.Context(), telemetry.Options{ServiceName: "s", Getenv: env(tt.env)})
			if err != nil {
				t.Fatal(err)
			}
			defer tel.Shutdown(context.Background())
			if tel.Exporting.Traces || tel.Exporting.Metrics {
				t.Errorf("Exporting = %+v, want none", tel.Exporting)
			}
			// Spans still get IDs so logs can carry trace_id.
			_, span := tel.TracerProvider.Tracer("t").Start(context.Background(), "op")
			defer span.End()
			if !span.SpanContext().IsValid() {
				t.Error("span context invalid without exporter")
			}
			if span.IsRecording() {
				t.Error("spans are recorded although nothing exports them")
			}
		})
	}
}

func TestPrometheusHandler(t *testing.T) {
	tel, err := telemetry.Setup(t.Context(), telemetry.Options{ServiceName: "s", Getenv: env(nil)})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	c, err := tel.MeterProvider.Meter("t").Int64Counter("piggy_reviews")
	if err != nil {
		t.Fatal(err)
	}
	c.Add(context.Background(), 2)

	rec := httptest.NewRecorder()
	tel.MetricsHandler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{"piggy_reviews_total", "go_goroutines"} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics output lacks %q", want)
		}
	}
}

func TestUnsupportedProtocol(t *testing.T) {
	_, err := telemetry.Setup(t.Context(), telemetry.Options{Getenv: env(map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
		"OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon",
	})})
	if err == nil || !strings.Contains(err.Error(), "carrier-pigeon") {
		t.Errorf("Setup error = %v, want unsupported protocol", err)
	}
}
