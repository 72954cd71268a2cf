package logging

import (
	"fmt"
	"log/slog"
)

// Redacted is the text that stands in for a secret value.
const Redacted = "[REDACTED]"

// Secret holds a value that must never reach a log, error, trace or metric.
// Formatting it with fmt, encoding it as JSON or logging it with slog yields
// Redacted; Reveal returns the value for the one place that needs it.
type Secret string

// Reveal returns the secret value.
func (s Secret) Reveal() string { return string(s) }

// String implements fmt.Stringer with the redaction.
func (s Secret) String() string { return Redacted }

// GoString implements fmt.GoStringer with the redaction.
func (s Secret) GoString() string { return Redacted }

// Format implements fmt.Formatter so that every verb, %x and %q included,
// prints the redaction.
func (s Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(Redacted)) }

// LogValue implements slog.LogValuer with the redaction.
func (s Secret) LogValue() slog.Value { return slog.StringValue(Redacted) }

// MarshalText implements encoding.TextMarshaler (used by encoding/json) with
// the redaction.
func (s Secret) MarshalText() ([]byte, error) { return []byte(Redacted), nil }
