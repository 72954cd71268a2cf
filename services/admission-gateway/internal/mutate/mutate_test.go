package mutate

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	corev1 "k8s.io/api/core/v1"

	"github.com/piggysec/piggy/libs/podidentity"
	"github.com/piggysec/piggy/libs/podsettings"
)

var update = flag.Bool("update", false, "rewrite the golden patch files")

const broker = "https://piggy-secret-broker.piggy.svc:8443"

// fakeResolver answers from a map of image → config and records lookups.
type fakeResolver struct {
	mu      sync.Mutex
	images  map[string]ImageConfig
	err     error
	lookups []ImageLookup
}

func (f *fakeResolver) Resolve(_ context.Context, l ImageLookup) (ImageConfig, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lookups = append(f.lookups, l)
	if f.err != nil {
		return ImageConfig{}, f.err
	}
	img, ok := f.images[l.Image]
	if !ok {
		return ImageConfig{}, fmt.Errorf("manifest unknown")
	}
	return img, nil
}

// fakeEnv serves ConfigMaps and Secrets from maps.
type fakeEnv struct {
	configMaps map[string]map[string]string
	secrets    map[string]map[string]string
}

func (f fakeEnv) ConfigMap(_ context.Context, ns, name string) (map[string]string, error) {
	if d, ok := f.configMaps[ns+"/"+name]; ok {
		return d, nil
	}
	return nil, ErrNotFound
}

func (f fakeEnv) Secret(_ context.Context, ns, name string) (map[string]string, error) {
	if d, ok := f.secrets[ns+"/"+name]; ok {
		return d, nil
	}
	return nil, ErrNotFound
}

func newTestMutator(cfg Config, r *fakeResolver, env fakeEnv) *Mutator {
	if cfg.EnvImage == "" {
		cfg.EnvImage = "ghcr.io/piggysec/piggy-env:test"
	}
	if cfg.AllowedAddresses == nil {
		cfg.AllowedAddresses = []string{broker}
	}
	if cfg.BrokerCABundle == "" {
		cfg.BrokerCABundle = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
	}
	uid := 0
	m := New(cfg, r, env)
	m.newUID = func() string { uid++; return fmt.Sprintf("uid-%d", uid) }
	return m
}

func podJSON(t *testing.T, s string) (*corev1.Pod, []byte) {
	t.Helper()
	var p corev1.Pod
	if err := json.Unmarshal([]byte(s), &p); err != nil {
		t.Fatalf("test pod: %v", err)
	}
	return &p, []byte(s)
}

func apply(t *testing.T, doc []byte, ops []Op) []byte {
	t.Helper()
	if len(ops) == 0 {
		return doc
	}
	raw, err := json.Marshal(ops)
	if err != nil {
		t.Fatal(err)
	}
	p, err := jsonpatch.DecodePatch(raw)
	if err != nil {
		t.Fatalf("decode patch: %v", err)
	}
	out, err := p.Apply(doc)
	if err != nil {
		t.Fatalf("apply patch: %v\npatch: %s", err, raw)
	}
	return out
}

func golden(t *testing.T, name string, ops []Op) {
	t.Helper()
	got, err := json.MarshalIndent(ops, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, append(got, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if diff := cmp.Diff(strings.TrimSpace(string(want)), strings.TrimSpace(string(got))); diff != "" {
		t.Errorf("patch differs from %s (-want +got):\n%s", path, diff)
	}
}

const annotated = `"annotations": {"piggysec.com/aws-secret-name": "team/app", "piggysec.com/piggy-address": "` + broker + `"}`

func TestMutateGolden(t *testing.T) {
	resolver := &fakeResolver{images: map[string]ImageConfig{
		"registry.example/app:1":  {Digest: "sha256:aaa", Entrypoint: []string{"/app"}, Cmd: []string{"serve", "--port=80"}},
		"registry.example/tool:1": {Digest: "sha256:bbb", Cmd: []string{"/bin/tool"}},
	}}
	env := fakeEnv{
		configMaps: map[string]map[string]string{"team/cfg": {"DB_PASSWORD": "piggy:DB_PASSWORD", "PLAIN": "x"}},
		secrets:    map[string]map[string]string{"team/sec": {"token": "piggy:API_TOKEN"}},
	}
	tests := []struct {
		name     string
		defaults map[string]string
		pod      string
	}{
		{"explicit-command", nil, `{"metadata": {"name": "web", ` + annotated + `},
			"spec": {"containers": [{"name": "app", "image": "registry.example/app:1", "command": ["/app", "serve"], "args": ["--port", "80"],
				"env": [{"name": "PASSWORD", "value": "piggy:PASSWORD"}]}]}}`},
		{"image-entrypoint-and-cmd", nil, `{"metadata": {"name": "web", ` + annotated + `},
			"spec": {"containers": [{"name": "app", "image": "registry.example/app:1", "env": [{"name": "A", "value": "piggy:A"}]}]}}`},
		{"image-entrypoint-with-args", nil, `{"metadata": {"name": "web", ` + annotated + `},
			"spec": {"containers": [{"name": "app", "image": "registry.example/app:1", "args": ["migrate"], "env": [{"name": "A", "value": "piggy:A"}]}]}}`},
		{"init-containers-and-sources", nil, `{"metadata": {"name": "web", ` + annotated + `},
			"spec": {"volumes": [{"name": "data", "emptyDir": {}}],
				"initContainers": [{"name": "migrate", "image": "registry.example/tool:1", "envFrom": [{"configMapRef": {"name": "cfg"}}]}],
				"containers": [
					{"name": "app", "image": "registry.example/app:1", "command": ["/app"], "volumeMounts": [{"name": "data", "mountPath": "/data"}],
					 "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}}]},
					{"name": "sidecar", "image": "registry.example/app:1", "command": ["/sidecar"], "env": [{"name": "X", "value": "plain"}]}]}}`},
		{"standalone-default-name", map[string]string{"piggy-address": broker}, `{"metadata": {"name": "web", "annotations": {"piggysec.com/standalone": "true", "piggysec.com/aws-region": "eu-west-1", "piggysec.com/piggy-number-of-retry": "3"}},
			"spec": {"serviceAccountName": "api", "containers": [{"name": "app", "image": "registry.example/app:1", "command": ["/app"], "env": [{"name": "A", "value": "piggy:A"}]}]}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newTestMutator(Config{Defaults: podsettings.Defaults{Values: tt.defaults}}, resolver, env)
			pod, raw := podJSON(t, tt.pod)
			out := m.Mutate(t.Context(), pod, "team")
			if out.Denied != "" {
				t.Fatalf("denied: %s", out.Denied)
			}
			golden(t, tt.name, out.Patch)

			// The patch applies and gives a valid pod; running again on
			// the result changes nothing (re-invocation).
			mutated := apply(t, raw, out.Patch)
			var again corev1.Pod
			if err := json.Unmarshal(mutated, &again); err != nil {
				t.Fatalf("patched pod does not decode: %v", err)
			}
			if again.Spec.InitContainers[0].Name != InstallContainerName {
				t.Errorf("first init container = %q, want %q", again.Spec.InitContainers[0].Name, InstallContainerName)
			}
			second := m.Mutate(t.Context(), &again, "team")
			if len(second.Patch) != 0 || second.Denied != "" {
				t.Errorf("re-invocation produced patch %v (denied %q), want none", second.Patch, second.Denied)
			}
		})
	}
}

func TestReinvocationKeepsUIDsAndMutatesNewContainers(t *testing.T) {
	m := newTestMutator(Config{}, &fakeResolver{}, fakeEnv{})
	pod, raw := podJSON(t, `{"metadata": {"name": "web", `+annotated+`},
		"spec": {"containers": [{"name": "app", "image": "a", "command": ["/app"], "env": [{"name": "A", "value": "piggy:A"}]}]}}`)
	first := m.Mutate(t.Context(), pod, "team")
	mutated := apply(t, raw, first.Patch)

	// Another webhook adds a container that also references piggy:.
	var doc map[string]any
	if err := json.Unmarshal(mutated, &doc); err != nil {
		t.Fatal(err)
	}
	spec := doc["spec"].(map[string]any)
	spec["containers"] = append(spec["containers"].([]any), map[string]any{
		"name": "late", "image": "b", "command": []any{"/late"}, "env": []any{map[string]any{"name": "B", "value": "piggy:B"}},
	})
	withLate, _ := json.Marshal(doc)
	var p2 corev1.Pod
	if err := json.Unmarshal(withLate, &p2); err != nil {
		t.Fatal(err)
	}
	second := m.Mutate(t.Context(), &p2, "team")
	final := apply(t, withLate, second.Patch)
	var got corev1.Pod
	if err := json.Unmarshal(final, &got); err != nil {
		t.Fatal(err)
	}
	ids, err := podidentity.Parse(got.Annotations[podidentity.AnnotationKey])
	if err != nil {
		t.Fatal(err)
	}
	want := podidentity.Identities{
		"app":  {UID: "uid-1", Signature: podidentity.Signature([]string{"/app"})},
		"late": {UID: "uid-2", Signature: podidentity.Signature([]string{"/late"})},
	}
	if diff := cmp.Diff(want, ids); diff != "" {
		t.Errorf("identities (-want +got):\n%s", diff)
	}
	if n := len(got.Spec.InitContainers); n != 1 {
		t.Errorf("%d init containers, want 1", n)
	}
	if len(got.Spec.Volumes) != 2 {
		t.Errorf("volumes = %v, want launcher and token once", got.Spec.Volumes)
	}
}

func TestUnknownFieldsSurvive(t *testing.T) {
	m := newTestMutator(Config{}, &fakeResolver{}, fakeEnv{})
	raw := `{"metadata": {"name": "web", ` + annotated + `, "futureMeta": {"x": 1}},
		"spec": {"futureSpecField": "keep-me", "containers": [{"name": "app", "image": "a", "command": ["/app"],
			"futureContainerField": [1, 2], "env": [{"name": "A", "value": "piggy:A", "futureEnvField": true}]}]}}`
	pod, doc := podJSON(t, raw)
	out := m.Mutate(t.Context(), pod, "team")
	mutated := apply(t, doc, out.Patch)
	var got map[string]any
	if err := json.Unmarshal(mutated, &got); err != nil {
		t.Fatal(err)
	}
	spec := got["spec"].(map[string]any)
	c := spec["containers"].([]any)[0].(map[string]any)
	checks := map[string]any{
		"spec.futureSpecField":            spec["futureSpecField"],
		"metadata.futureMeta":             got["metadata"].(map[string]any)["futureMeta"],
		"container.futureContainerField":  c["futureContainerField"],
		"container.env[0].futureEnvField": c["env"].([]any)[0].(map[string]any)["futureEnvField"],
	}
	for path, v := range checks {
		if v == nil {
			t.Errorf("%s was dropped by the patch", path)
		}
	}
}

func TestDecisions(t *testing.T) {
	env := fakeEnv{configMaps: map[string]map[string]string{"team/plain": {"A": "x"}}}
	tests := []struct {
		name        string
		cfg         Config
		resolverErr error
		pod         string
		wantPatch   bool
		wantDenied  string
		wantWarning string
	}{
		{
			name: "nothing references piggy",
			pod:  `{"metadata": {"name": "web", ` + annotated + `}, "spec": {"containers": [{"name": "app", "image": "a", "env": [{"name": "A", "value": "plain"}]}]}}`,
		},
		{
			name: "no piggy source configured",
			pod:  `{"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app", "image": "a", "command": ["/a"], "env": [{"name": "A", "value": "piggy:A"}]}]}}`,
		},
		{
			name:        "cluster-wide default address on a pod without annotations",
			cfg:         Config{Defaults: podsettings.Defaults{Values: map[string]string{"piggy-address": broker}}},
			pod:         `{"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app", "image": "a", "command": ["/a"], "env": [{"name": "A", "value": "piggy:A"}]}]}}`,
			wantPatch:   true,
			wantWarning: `the broker reads the default secret "team/default"`,
		},
		{
			name:       "address not allowed",
			pod:        `{"metadata": {"name": "web", "annotations": {"piggysec.com/piggy-address": "https://evil.example"}}, "spec": {"containers": [{"name": "app", "image": "a", "command": ["/a"], "env": [{"name": "A", "value": "piggy:A"}]}]}}`,
			wantDenied: `"https://evil.example" is not an allowed broker address`,
		},
		{
			name:       "plain http address",
			cfg:        Config{AllowedAddresses: []string{"https://broker"}},
			pod:        `{"metadata": {"name": "web", "annotations": {"piggysec.com/piggy-address": "http://broker"}}, "spec": {"containers": [{"name": "app", "image": "a", "command": ["/a"], "env": [{"name": "A", "value": "piggy:A"}]}]}}`,
			wantDenied: "is not an https:// URL",
		},
		{
			name:       "secret name without address or standalone",
			pod:        `{"metadata": {"name": "web", "annotations": {"piggysec.com/aws-secret-name": "x"}}, "spec": {"containers": [{"name": "app", "image": "a", "command": ["/a"], "env": [{"name": "A", "value": "piggy:A"}]}]}}`,
			wantDenied: "no broker address",
		},
		{
			name:        "resolver failure denies with container, image and advice",
			resolverErr: errors.New("registry unreachable"),
			pod:         `{"metadata": {"name": "web", ` + annotated + `}, "spec": {"containers": [{"name": "app", "image": "reg/app:1", "env": [{"name": "A", "value": "piggy:A"}]}]}}`,
			wantDenied:  `container "app" has no command and the command of image "reg/app:1" could not be read: registry unreachable; set the container's command explicitly`,
		},
		{
			name:        "resolver failure admitted by operator policy with a warning",
			cfg:         Config{OnResolveFailure: AdmitOnResolveFailure},
			resolverErr: errors.New("registry unreachable"),
			pod:         `{"metadata": {"name": "web", ` + annotated + `}, "spec": {"containers": [{"name": "app", "image": "reg/app:1", "env": [{"name": "A", "value": "piggy:A"}]}]}}`,
			wantWarning: "admitted without Piggy by operator policy",
		},
		{
			name:       "pull secret of another namespace",
			pod:        `{"metadata": {"name": "web", "annotations": {"piggysec.com/piggy-address": "` + broker + `", "piggysec.com/image-pull-secret": "regcred", "piggysec.com/image-pull-secret-namespace": "other"}}, "spec": {"containers": [{"name": "app", "image": "a", "env": [{"name": "A", "value": "piggy:A"}]}]}}`,
			wantDenied: `pull secrets come from the pod's own namespace "team"; namespace "other" is not one the cluster operator shares pull secrets from`,
		},
		{
			name:      "pull secret of the pod's own namespace named explicitly",
			pod:       `{"metadata": {"name": "web", "annotations": {"piggysec.com/piggy-address": "` + broker + `", "piggysec.com/image-pull-secret": "regcred", "piggysec.com/image-pull-secret-namespace": "team"}}, "spec": {"containers": [{"name": "app", "image": "a", "command": ["/a"], "env": [{"name": "A", "value": "piggy:A"}]}]}}`,
			wantPatch: true,
		},
		{
			name:      "pull secret of a namespace the operator shares",
			cfg:       Config{PullSecretNamespaces: []string{"shared"}},
			pod:       `{"metadata": {"name": "web", "annotations": {"piggysec.com/piggy-address": "` + broker + `", "piggysec.com/image-pull-secret": "regcred", "piggysec.com/image-pull-secret-namespace": "shared"}}, "spec": {"containers": [{"name": "app", "image": "a", "command": ["/a"], "env": [{"name": "A", "value": "piggy:A"}]}]}}`,
			wantPatch: true,
		},
		{
			name:       "missing ConfigMap that is not optional",
			pod:        `{"metadata": {"name": "web", ` + annotated + `}, "spec": {"containers": [{"name": "app", "image": "a", "command": ["/a"], "envFrom": [{"configMapRef": {"name": "absent"}}]}]}}`,
			wantDenied: `container "app": envFrom: ConfigMap team/absent not found`,
		},
		{
			name: "missing optional ConfigMap",
			pod:  `{"metadata": {"name": "web", ` + annotated + `}, "spec": {"containers": [{"name": "app", "image": "a", "command": ["/a"], "envFrom": [{"configMapRef": {"name": "absent", "optional": true}}]}]}}`,
		},
		{
			name: "ConfigMap without piggy values",
			pod:  `{"metadata": {"name": "web", ` + annotated + `}, "spec": {"containers": [{"name": "app", "image": "a", "command": ["/a"], "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "plain", "key": "A"}}}]}]}}`,
		},
		{
			name:       "unparsable standalone is denied",
			pod:        `{"metadata": {"name": "web", "annotations": {"piggysec.com/standalone": "yes", "piggysec.com/aws-secret-name": "x"}}, "spec": {"containers": [{"name": "app", "image": "a", "command": ["/a"], "env": [{"name": "A", "value": "piggy:A"}]}]}}`,
			wantDenied: `piggysec.com/standalone: "yes" is not a boolean`,
		},
		{
			name:        "unparsable ignore-no-env warns and stays false",
			pod:         `{"metadata": {"name": "web", "annotations": {"piggysec.com/piggy-ignore-no-env": "ture", "piggysec.com/piggy-address": "` + broker + `"}}, "spec": {"containers": [{"name": "app", "image": "a", "command": ["/a"], "env": [{"name": "A", "value": "piggy:A"}]}]}}`,
			wantPatch:   true,
			wantWarning: `piggysec.com/piggy-ignore-no-env: "ture" is not a boolean (true or false); using false`,
		},
		{
			name:        "locked setting is ignored with a warning",
			cfg:         Config{Defaults: podsettings.Defaults{Values: map[string]string{"piggy-default-secret-name-prefix": "prod/"}, Locked: map[string]bool{"piggy-default-secret-name-prefix": true}}},
			pod:         `{"metadata": {"name": "web", "annotations": {"piggysec.com/piggy-default-secret-name-prefix": "other/", "piggysec.com/piggy-address": "` + broker + `"}}, "spec": {"containers": [{"name": "app", "image": "a", "command": ["/a"], "env": [{"name": "A", "value": "piggy:A"}]}]}}`,
			wantPatch:   true,
			wantWarning: "set by the cluster operator; the pod's value is ignored",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newTestMutator(tt.cfg, &fakeResolver{err: tt.resolverErr}, env)
			pod, _ := podJSON(t, tt.pod)
			out := m.Mutate(t.Context(), pod, "team")
			if tt.wantDenied == "" && out.Denied != "" {
				t.Fatalf("denied: %s", out.Denied)
			}
			if tt.wantDenied != "" && !strings.Contains(out.Denied, tt.wantDenied) {
				t.Fatalf("denied = %q, want it to contain %q", out.Denied, tt.wantDenied)
			}
			if got := len(out.Patch) > 0; got != tt.wantPatch {
				t.Errorf("patch present = %v, want %v: %v", got, tt.wantPatch, out.Patch)
			}
			if tt.wantWarning != "" && !strings.Contains(strings.Join(out.Warnings, "\n"), tt.wantWarning) {
				t.Errorf("warnings %q lack %q", out.Warnings, tt.wantWarning)
			}
		})
	}
}

func TestLookupCarriesPullSecretsAndPlatform(t *testing.T) {
	r := &fakeResolver{images: map[string]ImageConfig{"reg/app:1": {Entrypoint: []string{"/app"}}}}
	m := newTestMutator(Config{PullSecretNamespaces: []string{"shared"}}, r, fakeEnv{})
	pod, _ := podJSON(t, `{"metadata": {"name": "web", "annotations": {"piggysec.com/piggy-address": "`+broker+`",
			"piggysec.com/image-pull-secret": "extra", "piggysec.com/image-pull-secret-namespace": "shared", "piggysec.com/image-skip-verify-registry": "true"}},
		"spec": {"serviceAccountName": "api", "imagePullSecrets": [{"name": "regcred"}], "nodeSelector": {"kubernetes.io/arch": "arm64"},
			"containers": [{"name": "app", "image": "reg/app:1", "env": [{"name": "A", "value": "piggy:A"}]}]}}`)
	if out := m.Mutate(t.Context(), pod, "team"); out.Denied != "" {
		t.Fatal(out.Denied)
	}
	want := []ImageLookup{{
		Image: "reg/app:1", Namespace: "team", ServiceAccount: "api",
		PullSecrets:   []SecretRef{{"team", "regcred"}, {"shared", "extra"}},
		Arch:          "arm64",
		SkipTLSVerify: true,
	}}
	if diff := cmp.Diff(want, r.lookups); diff != "" {
		t.Errorf("lookups (-want +got):\n%s", diff)
	}
}

func TestPlatformFromNodeAffinity(t *testing.T) {
	pod, _ := podJSON(t, `{"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
		{"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}, {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]}}}}}`)
	if os, arch := platform(pod); os != "linux" || arch != "arm64" {
		t.Errorf("platform = %s/%s, want linux/arm64", os, arch)
	}
}
