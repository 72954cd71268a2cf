package daemon

import (
	"bytes"
	"encoding/json"
	"flag"
	"strings"
	"testing"

	"k8s.io/klog/v2"

	"github.com/piggysec/piggy/libs/testca"
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

// TestStartRecordsAndKlog: a service logs its build when it starts, and
// client-go's klog output becomes JSON records of its log.
func TestStartRecordsAndKlog(t *testing.T) {
	ca, err := testca.New("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	files, err := ca.WriteFiles(t.TempDir(), "svc", testca.Request{CommonName: "svc", Hosts: []string{"localhost"}, Usage: testca.Server})
	if err != nil {
		t.Fatal(err)
	}
	var s Settings
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	s.Register(fs)
	if err := fs.Parse([]string{"--tls-cert-file=" + files.CertFile, "--tls-key-file=" + files.KeyFile, "--tls-ca-file=" + files.CAFile}); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	if _, err := New(t.Context(), "svc", "1.2.3", s, &stderr, func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	klog.InfoS("reflector probe", "resource", "pods")
	klog.Flush()
	var started, routed bool
	for _, line := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("not a JSON record: %q", line)
		}
		started = started || r["message"] == "starting" && r["version"] == "1.2.3" && r["service"] == "svc"
		routed = routed || r["message"] == "reflector probe" && r["component"] == "client-go" && r["resource"] == "pods"
	}
	if !started || !routed {
		t.Errorf("start record %v, klog record %v in:\n%s", started, routed, stderr.String())
	}
}
