// Package logging builds the JSON slog loggers every Piggy service uses.
//
// Records carry the field names operators of the original Piggy grep for:
// "level" (lower case), "time" (RFC 3339 with nanoseconds) and "message".
// When the context passed to a ...Context logging call holds a recording or
// sampled OpenTelemetry span, "trace_id" and "span_id" are added.
package logging

import (
	"context"
	"io"
	"log/slog"
	"strings"

	"go.opentelemetry.io/otel/trace"
)

// Options configures New.
type Options struct {
	// Level is the minimum level logged; the zero value logs Info and above.
	Level slog.Leveler
	// Service, when set, is added to every record as "service".
	Service string
}

// New returns a JSON logger writing to w.
func New(w io.Writer, opts Options) *slog.Logger {
	h := slog.NewJSONHandler(w, &slog.HandlerOptions{
		Level:       opts.Level,
		ReplaceAttr: replaceAttr,
	})
	l := slog.New(&traceHandler{Handler: h})
	if opts.Service != "" {
		l = l.With(slog.String("service", opts.Service))
	}
	return l
}

// ParseLevel maps "debug", "info", "warn" and "error" (any case) to a level.
// It reports false for anything else.
func ParseLevel(s string) (slog.Level, bool) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.TrimSpace(s))); err != nil {
		return slog.LevelInfo, false
	}
	return l, true
}

func replaceAttr(groups []string, a slog.Attr) slog.Attr {
	if len(groups) > 0 {
		return a
	}
	switch a.Key {
	case slog.MessageKey:
		a.Key = "message"
	case slog.LevelKey:
		if l, ok := a.Value.Any().(slog.Level); ok {
			a.Value = slog.StringValue(levelName(l))
		}
	}
	return a
}

// levelName is the lower-case name of l, without allocating for the four
// standard levels (every record has one).
func levelName(l slog.Level) string {
	switch l {
	case slog.LevelDebug:
		return "debug"
	case slog.LevelInfo:
		return "info"
	case slog.LevelWarn:
		return "warn"
	case slog.LevelError:
		return "error"
	}
	return strings.ToLower(l.String())
}

// traceHandler adds the active span's trace and span IDs to records.
type traceHandler struct {
	slog.Handler
}

func (h *traceHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(
			slog.String("trace_id", sc.TraceID().String()),
			slog.String("span_id", sc.SpanID().String()),
		)
	}
	return h.Handler.Handle(ctx, r)
}

func (h *traceHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &traceHandler{Handler: h.Handler.WithAttrs(attrs)}
}

func (h *traceHandler) WithGroup(name string) slog.Handler {
	return &traceHandler{Handler: h.Handler.WithGroup(name)}
}
