// Package jsonlog builds the slog logger piggy-env writes to stderr: one JSON
// object per line with the fields of the original piggy-env's zerolog output,
// "level" (lower case: debug, info, warn, error), "time" (RFC 3339) and
// "message", followed by any attributes.
package jsonlog

import (
	"io"
	"log/slog"
	"time"
)

// New returns a logger writing JSON lines to w. Debug records are written
// only when debug is true.
func New(w io.Writer, debug bool) *slog.Logger {
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{
		Level:       level,
		ReplaceAttr: replaceAttr,
	}))
}

// replaceAttr renames and reformats slog's built-in attributes to the
// zerolog field names and values operators already grep for.
func replaceAttr(groups []string, a slog.Attr) slog.Attr {
	if len(groups) > 0 {
		return a
	}
	switch a.Key {
	case slog.TimeKey:
		if t, ok := a.Value.Any().(time.Time); ok {
			return slog.String("time", t.Format(time.RFC3339))
		}
	case slog.LevelKey:
		if l, ok := a.Value.Any().(slog.Level); ok {
			return slog.String("level", levelName(l))
		}
	case slog.MessageKey:
		return slog.Attr{Key: "message", Value: a.Value}
	}
	return a
}

func levelName(l slog.Level) string {
	switch {
	case l < slog.LevelInfo:
		return "debug"
	case l < slog.LevelWarn:
		return "info"
	case l < slog.LevelError:
		return "warn"
	default:
		return "error"
	}
}
