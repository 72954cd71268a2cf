package jsonlog

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestNew(t *testing.T) {
	tests := []struct {
		name  string
		debug bool
		log   func(l *slog.Logger)
		want  []map[string]any // without "time"
	}{
		{
			name:  "levels without debug",
			debug: false,
			log: func(l *slog.Logger) {
				l.Debug("hidden")
				l.Info("Request secrets was successful", "keys", 2)
				l.Warn("careful")
				l.Error("broken")
			},
			want: []map[string]any{
				{"level": "info", "message": "Request secrets was successful", "keys": float64(2)},
				{"level": "warn", "message": "careful"},
				{"level": "error", "message": "broken"},
			},
		},
		{
			name:  "debug",
			debug: true,
			log: func(l *slog.Logger) {
				l.Debug("shown")
			},
			want: []map[string]any{{"level": "debug", "message": "shown"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			tt.log(New(&buf, tt.debug))
			var got []map[string]any
			for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
				var m map[string]any
				if err := json.Unmarshal([]byte(line), &m); err != nil {
					t.Fatalf("line %q is not JSON: %v", line, err)
				}
				ts, _ := m["time"].(string)
				if _, err := time.Parse(time.RFC3339, ts); err != nil {
					t.Errorf("time %q is not RFC 3339", ts)
				}
				delete(m, "time")
				got = append(got, m)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("log lines mismatch (-want +got):\n%s", diff)
			}
		})
	}
}
