package daemon

import (
	"flag"
	"strings"
	"testing"
)

func TestProfilingIsOffByDefaultAndNeedsTheMetricsPort(t *testing.T) {
	var s Settings
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	s.Register(fs)
	if s.Profiling {
		t.Fatal("--profiling is on by default")
	}
	if err := fs.Parse([]string{"--tls-cert-file=c", "--tls-key-file=k", "--tls-ca-file=a", "--profiling", "--metrics-address="}); err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "--profiling needs --metrics-address") {
		t.Fatalf("Validate() = %v, want the --profiling error", err)
	}
}
