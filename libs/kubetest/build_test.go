package kubetest

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestScratchGoMod(t *testing.T) {
	modJSON := `{"Go":"1.26.0","Replace":[
		{"Old":{"Path":"k8s.io/api"},"New":{"Path":"./staging/src/k8s.io/api"}},
		{"Old":{"Path":"k8s.io/client-go"},"New":{"Path":"./staging/src/k8s.io/client-go"}},
		{"Old":{"Path":"example.com/x","Version":"v1.0.0"},"New":{"Path":"example.com/y","Version":"v1.1.0"}}]}`
	got, err := scratchGoMod(apiServerArtifact("v1.37.2"), []byte(modJSON))
	if err != nil {
		t.Fatal(err)
	}
	want := `module piggy.local/kubetest-build

go 1.26.0

require k8s.io/kubernetes v1.37.2

replace (
	k8s.io/api => k8s.io/api v0.37.2
	k8s.io/client-go => k8s.io/client-go v0.37.2
)
`
	if diff := cmp.Diff(want, string(got)); diff != "" {
		t.Errorf("go.mod (-want +got):\n%s", diff)
	}

	got, err = scratchGoMod(etcdArtifact("v3.7.3"), []byte(`{"Go":"1.26.0","Replace":[{"Old":{"Path":"go.etcd.io/etcd/api/v3"},"New":{"Path":"../api"}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	want = "module piggy.local/kubetest-build\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 v3.7.3\n"
	if diff := cmp.Diff(want, string(got)); diff != "" {
		t.Errorf("go.mod (-want +got):\n%s", diff)
	}
}

func TestBuildsTo(t *testing.T) {
	const out = "/c/kubernetes-v1.37.2/kube-apiserver"
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{[]string{"go", "build", "-trimpath", "-o", out, "k8s.io/kubernetes/cmd/kube-apiserver"}, true},
		{[]string{"go", "build", "-o=" + out, "x"}, true},
		{[]string{"go", "build", "-o", "/elsewhere", "x"}, false},
		{[]string{"go", "build", "-o"}, false},
	} {
		if got := buildsTo(tc.args, out); got != tc.want {
			t.Errorf("buildsTo(%q) = %v, want %v", tc.args, got, tc.want)
		}
	}
}

func TestTailBuffer(t *testing.T) {
	tb := &tailBuffer{max: 10}
	_, _ = tb.Write([]byte("line one\nline two\nend\n"))
	if got, want := tb.String(), "end\n"; got != want {
		t.Errorf("tail = %q, want %q", got, want)
	}
}

// TestBuildFailureReportsOutput checks that a build that cannot succeed
// returns an error carrying the go command's own words.
func TestBuildFailureReportsOutput(t *testing.T) {
	if testing.Short() {
		t.Skip("asks the Go module proxy")
	}
	opts := Options{CacheDir: t.TempDir(), KubernetesVersion: "v1.0.0-kubetest-does-not-exist", Logf: t.Logf}
	_, err := EnsureBinaries(context.Background(), opts)
	if err == nil {
		t.Fatal("EnsureBinaries succeeded for a version that does not exist")
	}
	t.Logf("error as reported:\n%v", err)
	for _, want := range []string{"go mod download", "v1.0.0-kubetest-does-not-exist", "last output"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
}
