package logging

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/trace"
)

func TestNewFieldNames(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf, Options{Level: slog.LevelDebug, Service: "admission-gateway"})
	l.InfoContext(t.Context(), "Pod 'web' has been mutated (took 1ms)", "namespace", "default", "pod_name", "web")

	var got map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("log line is not JSON: %v: %s", err, buf.String())
	}
	ts, _ := got["time"].(string)
	if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
		t.Errorf("time %q is not RFC 3339: %v", ts, err)
	}
	delete(got, "time")
	want := map[string]any{
		"level":     "info",
		"message":   "Pod 'web' has been mutated (took 1ms)",
		"service":   "admission-gateway",
		"namespace": "default",
		"pod_name":  "web",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("log record (-want +got):\n%s", diff)
	}
}

func TestTraceIDs(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf, Options{})
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{1, 2, 3},
		SpanID:     trace.SpanID{4, 5, 6},
		TraceFlags: trace.FlagsSampled,
	})
	ctx := trace.ContextWithSpanContext(context.Background(), sc)
	l.With("a", 1).WarnContext(ctx, "hello")

	var got map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if got["trace_id"] != sc.TraceID().String() || got["span_id"] != sc.SpanID().String() {
		t.Errorf("trace fields = %v, %v; want %s, %s", got["trace_id"], got["span_id"], sc.TraceID(), sc.SpanID())
	}
	if got["level"] != "warn" {
		t.Errorf("level = %v, want warn", got["level"])
	}
}

func TestLevelFilter(t *testing.T) {
	var buf bytes.Buffer
	New(&buf, Options{}).Debug("hidden")
	if buf.Len() != 0 {
		t.Errorf("debug record logged at default level: %s", buf.String())
	}
}

func TestParseLevel(t *testing.T) {
	tests := []struct {
		in   string
		want slog.Level
		ok   bool
	}{
		{"debug", slog.LevelDebug, true},
		{"INFO", slog.LevelInfo, true},
		{" warn ", slog.LevelWarn, true},
		{"error", slog.LevelError, true},
		{"verbose", slog.LevelInfo, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, ok := ParseLevel(tt.in)
			if got != tt.want || ok != tt.ok {
				t.Errorf("ParseLevel(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestSecretNeverPrinted(t *testing.T) {
	const value = "hunter2-very-secret"
	s := Secret(value)
	var buf bytes.Buffer
	l := New(&buf, Options{})
	l.Info("values", "secret", s, "struct", struct{ S Secret }{s})
	js, err := json.Marshal(map[string]Secret{"k": s})
	if err != nil {
		t.Fatal(err)
	}
	outputs := []string{
		buf.String(),
		string(js),
		fmt.Sprint(s), fmt.Sprintf("%v %+v %#v %s %q %x %d", s, s, s, s, s, s, s),
		fmt.Errorf("wrapped: %v", s).Error(),
		errors.New(s.String()).Error(),
	}
	for _, out := range outputs {
		if strings.Contains(out, value) {
			t.Errorf("secret value leaked in %q", out)
		}
	}
	if s.Reveal() != value {
		t.Errorf("Reveal() = %q, want the value", s.Reveal())
	}
}
