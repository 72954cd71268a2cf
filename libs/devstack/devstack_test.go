package devstack

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/piggysec/piggy/libs/kubetest"
)

// TestDemo runs `make dev`'s demo-and-exit mode: the whole stack on real
// parts (kube-apiserver, registry, AWS-compatible endpoint, the three
// service binaries, piggy-env) and the demo pod run through piggy-env.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("the local stack needs a real kube-apiserver; skipped with -short")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	kube := kubetest.DefaultOptions(os.Getenv)
	kube.Logf = t.Logf
	stack, err := Start(t.Context(), Options{Dir: t.TempDir(), RepoRoot: root, Kube: kube, Out: &out})
	if err != nil {
		t.Fatalf("start: %v\n%s", err, out.String())
	}
	defer func() {
		if err := stack.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	}()
	res, err := stack.Demo(t.Context())
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	for k, want := range DemoValues {
		if res.Env[k] != want {
			t.Errorf("app saw %s=%q, want %q", k, res.Env[k], want)
		}
	}
	if len(res.Leaked) != 0 {
		t.Errorf("PIGGY_* leaked to the app: %v", res.Leaked)
	}
	if got := strings.Join(res.Args, " "); got != "--greeting hello from the image CMD" {
		t.Errorf("app args = %q, want the image CMD", got)
	}
	var usage bytes.Buffer
	stack.PrintUsage(&usage, "grpcurl")
	for _, want := range []string{"export KUBECONFIG=", "grpc.health.v1.Health/Check", "SecretBrokerService/ExplainAccess"} {
		if !strings.Contains(usage.String(), want) {
			t.Errorf("usage lacks %q", want)
		}
	}
	t.Log(out.String())
}
