package deploytest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// Release under which the chart is rendered in these tests.
const (
	releaseName      = "piggy"
	releaseNamespace = "piggy-system"
)

// repoRoot is the repository root (the directory holding go.work).
var repoRoot = sync.OnceValue(func() string {
	_, file, _, _ := goruntime.Caller(0)
	dir := filepath.Dir(file)
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			panic("deploytest: go.work not found above " + filepath.Dir(file))
		}
		dir = parent
	}
})

func chartDir() string { return filepath.Join(repoRoot(), "charts", "piggy") }

// tool finds a pinned tool: the env var, else .cache/tools/bin/<name>. A
// missing tool fails the test: CI must install it, never skip.
func tool(t testing.TB, envVar, name string) string {
	t.Helper()
	if p := os.Getenv(envVar); p != "" {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s=%s is not an executable: %v", envVar, p, err)
		}
		return p
	}
	p := filepath.Join(repoRoot(), ".cache", "tools", "bin", name)
	if _, err := exec.LookPath(p); err != nil {
		t.Fatalf("%s is not installed (%v): run deploy/tools/install.sh from the repository root "+
			"(builds the pinned version through the Go module proxy), or set %s", name, err, envVar)
	}
	return p
}

func helmBin(t testing.TB) string { return tool(t, "PIGGY_HELM", "helm") }

// run runs a command and returns its combined output; it fails t on a
// non-zero exit unless allowFail.
func run(t testing.TB, dir string, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// helmTemplate renders the chart as release piggy in piggy-system with
// Kubernetes 1.37 and the given extra helm arguments (--set ..., -f ...).
func helmTemplate(t testing.TB, extra ...string) []*unstructured.Unstructured {
	t.Helper()
	out, err := helmTemplateRaw(t, extra...)
	if err != nil {
		t.Fatalf("helm template %v: %v\n%s", extra, err, out)
	}
	return decodeObjects(t, out)
}

func helmTemplateRaw(t testing.TB, extra ...string) (string, error) {
	t.Helper()
	args := append([]string{"template", releaseName, chartDir(), "--namespace", releaseNamespace, "--kube-version", "1.37.2"}, extra...)
	return run(t, repoRoot(), nil, helmBin(t), args...)
}

// decodeObjects splits a multi-document YAML stream into objects.
func decodeObjects(t testing.TB, manifest string) []*unstructured.Unstructured {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifest), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("decode rendered manifest: %v", err)
		}
		if len(m) == 0 {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
	return objs
}

// find returns the objects of kind (and name, when not empty).
func find(objs []*unstructured.Unstructured, kind, name string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind && (name == "" || o.GetName() == name) {
			out = append(out, o)
		}
	}
	return out
}

// one returns the single object of kind and name, converted into T with
// strict field checking (an unknown field fails the test).
func one[T any](t testing.TB, objs []*unstructured.Unstructured, kind, name string) *T {
	t.Helper()
	found := find(objs, kind, name)
	if len(found) != 1 {
		t.Fatalf("want exactly one %s %q, found %d (rendered: %s)", kind, name, len(found), names(objs))
	}
	return convert[T](t, found[0])
}

func convert[T any](t testing.TB, u *unstructured.Unstructured) *T {
	t.Helper()
	out := new(T)
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, out, true); err != nil {
		t.Fatalf("%s %s does not convert strictly: %v", u.GetKind(), u.GetName(), err)
	}
	return out
}

func names(objs []*unstructured.Unstructured) string {
	var s []string
	for _, o := range objs {
		s = append(s, o.GetKind()+"/"+o.GetName())
	}
	return strings.Join(s, ", ")
}

// name is the chart's object name of a component.
func name(component string) string { return releaseName + "-" + component }

// binaries builds the service binaries once per test binary.
var binaries = struct {
	once sync.Once
	dir  string
	err  error
}{}

// serviceBinary builds (once) and returns the binary of a service module
// under services/.
func serviceBinary(t testing.TB, service string) string {
	t.Helper()
	binaries.once.Do(func() {
		binaries.dir, binaries.err = os.MkdirTemp("", "deploytest-bin-")
		if binaries.err != nil {
			return
		}
		for _, s := range []string{"admission-gateway", "image-resolver", "secret-broker", "piggy-env"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(binaries.dir, s), "./services/"+s)
			cmd.Dir = repoRoot()
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				binaries.err = fmt.Errorf("go build ./services/%s: %v\n%s", s, err, out)
				return
			}
		}
	})
	if binaries.err != nil {
		t.Fatal(binaries.err)
	}
	return filepath.Join(binaries.dir, service)
}

func TestMain(m *testing.M) {
	code := kube.Run(m)
	if binaries.dir != "" {
		_ = os.RemoveAll(binaries.dir)
	}
	os.Exit(code)
}

// newStatusServer answers /ok with 200 and anything else with 503.
func newStatusServer(t testing.TB) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ok" {
			_, _ = io.WriteString(w, "ok")
			return
		}
		http.Error(w, "not ready", http.StatusServiceUnavailable)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}
