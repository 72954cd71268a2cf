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
	"time"

	"github.com/google/go-cmp/cmp"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

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
	unread     map[string]bool // Secrets the source may not read
}

func (f fakeEnv) ConfigMap(_ context.Context, ns, name string) (map[string]string, error) {
	if d, ok := f.configMaps[ns+"/"+name]; ok {
		return d, nil
	}
	return nil, ErrNotFound
}

func (f fakeEnv) Secret(_ context.Context, ns, name string) (map[string]string, error) {
	if f.unread[ns+"/"+name] {
		return nil, ErrNotRead
	}
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
	env := fakeEnv{configMaps: map[string]map[string]string{"team/plain": {"A": "x"}}, unread: map[string]bool{"team/locked": true}}
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
			name: "a Secret the gateway may not read is skipped with a warning",
			pod: `{"metadata": {"name": "web", ` + annotated + `}, "spec": {"containers": [{"name": "app", "image": "a", "command": ["/a"], "env": [` +
				`{"name": "A", "valueFrom": {"secretKeyRef": {"name": "locked", "key": "a"}}}, {"name": "B", "value": "plain"}]}]}}`,
			wantWarning: `piggy: Secret team/locked was not searched for piggy: values (the cluster operator has not enabled Secret reads in this namespace)`,
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

func TestReservedNames(t *testing.T) {
	m := newTestMutator(Config{}, &fakeResolver{}, fakeEnv{})
	const app = `{"name": "app", "image": "a", "command": ["/app"], "env": [{"name": "A", "value": "piggy:A"}]}`
	fresh := func(spec string) func(*testing.T) *corev1.Pod {
		return func(t *testing.T) *corev1.Pod {
			pod, _ := podJSON(t, `{"metadata": {"name": "web", `+annotated+`}, "spec": `+spec+`}`)
			return pod
		}
	}
	// mutated is what the webhook made of a pod with containers app and
	// worker, changed by change.
	mutated := func(change func(*corev1.Pod)) func(*testing.T) *corev1.Pod {
		return func(t *testing.T) *corev1.Pod {
			_, raw := podJSON(t, `{"metadata": {"name": "web", `+annotated+`}, "spec": {"containers": [`+app+`,
				{"name": "worker", "image": "w", "command": ["/worker"], "env": [{"name": "B", "value": "piggy:B"}]}]}}`)
			var pod corev1.Pod
			out := m.Mutate(t.Context(), mustPod(t, raw), "team")
			if err := json.Unmarshal(apply(t, raw, out.Patch), &pod); err != nil {
				t.Fatal(err)
			}
			if change != nil {
				change(&pod)
			}
			return &pod
		}
	}
	volume := func(name string, src corev1.VolumeSource) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			for i := range p.Spec.Volumes {
				if p.Spec.Volumes[i].Name == name {
					p.Spec.Volumes[i].VolumeSource = src
				}
			}
		}
	}
	hostPath := corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}}
	install := func(change func(*corev1.Container)) func(*corev1.Pod) {
		return func(p *corev1.Pod) { change(&p.Spec.InitContainers[0]) }
	}
	container := func(change func(*corev1.Container)) func(*corev1.Pod) {
		return func(p *corev1.Pod) { change(&p.Spec.Containers[0]) }
	}
	// What admission of others adds to every container: the service
	// account token, IRSA's token and env, LimitRanger's defaults.
	othersAdd := func(c *corev1.Container) {
		c.VolumeMounts = append(c.VolumeMounts,
			corev1.VolumeMount{Name: "kube-api-access-x", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true},
			corev1.VolumeMount{Name: "aws-iam-token", MountPath: "/var/run/secrets/eks.amazonaws.com/serviceaccount", ReadOnly: true})
		c.Env = append(c.Env, corev1.EnvVar{Name: "AWS_ROLE_ARN", Value: "arn:aws:iam::1:role/r"})
		if c.Resources.Limits != nil {
			c.Resources.Limits["ephemeral-storage"] = resource.MustParse("1Gi")
		}
		if c.TerminationMessagePath == "" {
			c.TerminationMessagePath = corev1.TerminationMessagePathDefault
		}
	}

	const (
		recreated = "; create the pod from its own spec, without what Piggy added"
		uid       = "0123456789abcdef0123456789abcdef"
	)
	tests := []struct {
		name string
		pod  func(*testing.T) *corev1.Pod
		cfg  Config
		// want is the denial; "" means admitted without a patch.
		want string
	}{
		{name: "launcher volume of a hostPath", pod: fresh(`{"volumes": [{"name": "piggy-env", "hostPath": {"path": "/"}}], "containers": [` + app + `]}`),
			want: `piggy: volume "piggy-env" is reserved for Piggy; rename your volume`},
		{name: "launcher volume on disk", pod: fresh(`{"volumes": [{"name": "piggy-env", "emptyDir": {}}], "containers": [` + app + `]}`),
			want: `piggy: volume "piggy-env" is reserved for Piggy; rename your volume`},
		{name: "token of another audience", pod: fresh(`{"volumes": [{"name": "piggy-token", "projected": {"defaultMode": 292, "sources": [{"serviceAccountToken": {"audience": "api", "expirationSeconds": 600, "path": "token"}}]}}], "containers": [` + app + `]}`),
			want: `piggy: volume "piggy-token" is reserved for Piggy; rename your volume`},
		{name: "token of a longer life", pod: fresh(`{"volumes": [{"name": "piggy-token", "projected": {"defaultMode": 292, "sources": [{"serviceAccountToken": {"audience": "piggy", "expirationSeconds": 86400, "path": "token"}}]}}], "containers": [` + app + `]}`),
			want: `piggy: volume "piggy-token" is reserved for Piggy; rename your volume`},
		{name: "foreign token on a pod without piggy: values", pod: fresh(`{"volumes": [{"name": "piggy-token", "secret": {"secretName": "s"}}], "containers": [{"name": "app", "image": "a"}]}`),
			want: `piggy: volume "piggy-token" is reserved for Piggy; rename your volume`},
		{name: "foreign token on a pod Piggy is not configured for", pod: func(t *testing.T) *corev1.Pod {
			pod, _ := podJSON(t, `{"metadata": {"name": "web"}, "spec": {"volumes": [{"name": "piggy-token", "secret": {"secretName": "s"}}], "containers": [{"name": "app", "image": "a"}]}}`)
			return pod
		}, want: `piggy: volume "piggy-token" is reserved for Piggy; rename your volume`},
		{name: "own install container", pod: fresh(`{"initContainers": [{"name": "install-piggy-env", "image": "evil", "args": ["install", "/piggy"]}], "containers": [` + app + `]}`),
			want: `piggy: init container "install-piggy-env" is reserved for Piggy; rename your container`},
		{name: "container named like the install container", pod: fresh(`{"containers": [{"name": "install-piggy-env", "image": "a"}]}`),
			want: `piggy: container name "install-piggy-env" is reserved for Piggy; rename your container`},
		{name: "chosen piggy-uid annotation", pod: func(t *testing.T) *corev1.Pod {
			pod, _ := podJSON(t, `{"metadata": {"name": "web", "annotations": {"piggysec.com/aws-secret-name": "team/app", "piggysec.com/piggy-address": "`+broker+`",
				"piggysec.com/piggy-uid": "{\"app\":{\"uid\":\"`+uid+`\",\"signature\":\"\"}}"}}, "spec": {"containers": [`+app+`]}}`)
			return pod
		}, want: `piggy: annotation piggysec.com/piggy-uid is written by Piggy; remove it`},
		{name: "chosen PIGGY_UID", pod: fresh(`{"containers": [{"name": "app", "image": "a", "command": ["/app"], "env": [{"name": "A", "value": "piggy:A"}, {"name": "PIGGY_UID", "value": "` + uid + `"}]}]}`),
			want: `piggy: container "app" sets PIGGY_UID, which is reserved for Piggy; remove it`},
		{name: "chosen PIGGY_UID in an init container without piggy: values", pod: fresh(`{"initContainers": [{"name": "setup", "image": "s", "env": [{"name": "PIGGY_UID", "value": "` + uid + `"}]}], "containers": [` + app + `]}`),
			want: `piggy: container "setup" sets PIGGY_UID, which is reserved for Piggy; remove it`},
		{name: "container that already starts piggy-env", pod: fresh(`{"containers": [{"name": "app", "image": "a", "command": ["/piggy/piggy-env"], "args": ["--", "/app"], "env": [{"name": "PIGGY_ADDRESS", "value": "https://evil.example"}]}]}`),
			want: `piggy: container "app" already starts through /piggy/piggy-env, which only Piggy sets up; give it its own command`},

		{name: "re-invocation", pod: mutated(nil)},
		{name: "re-invocation after others added to every container", pod: mutated(func(p *corev1.Pod) {
			othersAdd(&p.Spec.InitContainers[0])
			othersAdd(&p.Spec.Containers[0])
		})},
		{name: "re-invocation after another init container was put first", pod: mutated(func(p *corev1.Pod) {
			p.Spec.InitContainers = append([]corev1.Container{{Name: "mesh-init", Image: "m"}}, p.Spec.InitContainers...)
		})},
		{name: "another install image", pod: mutated(install(func(c *corev1.Container) { c.Image = "evil" })),
			want: `piggy: init container "install-piggy-env" is reserved for Piggy; rename your container`},
		{name: "another CA for piggy-env", pod: mutated(install(func(c *corev1.Container) { c.Env[0].Value = "evil" })),
			want: `piggy: init container "install-piggy-env" is reserved for Piggy; rename your container`},
		{name: "install container with more PIGGY_ env", pod: mutated(install(func(c *corev1.Container) { c.Env = append(c.Env, corev1.EnvVar{Name: "PIGGY_X", Value: "1"}) })),
			want: `piggy: init container "install-piggy-env" is reserved for Piggy; rename your container`},
		{name: "install container with a mount inside the launcher directory", pod: mutated(install(func(c *corev1.Container) {
			c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "data", MountPath: "/piggy/piggy-env"})
		})), want: `piggy: init container "install-piggy-env" is reserved for Piggy; rename your container`},
		{name: "install container with privilege escalation", pod: mutated(install(func(c *corev1.Container) { c.SecurityContext.AllowPrivilegeEscalation = ptr(true) })),
			want: `piggy: init container "install-piggy-env" is reserved for Piggy; rename your container`},
		{name: "hostPath launcher volume", pod: mutated(volume(LauncherVolumeName, hostPath)),
			want: `piggy: volume "piggy-env" is reserved for Piggy; rename your volume`},
		{name: "token volume of another operator setting", pod: mutated(nil), cfg: Config{TokenExpiration: time.Hour},
			want: `piggy: volume "piggy-token" is reserved for Piggy; rename your volume`},
		// The webhook is stateless: identities made to agree with each
		// other pass as Piggy's (see checkReserved).
		{name: "uid chosen for both the annotation and PIGGY_UID", pod: mutated(func(p *corev1.Pod) {
			ids, _ := podidentity.Parse(p.Annotations[podidentity.AnnotationKey])
			e := ids["app"]
			e.UID = uid
			ids["app"] = e
			p.Annotations[podidentity.AnnotationKey] = ids.Format()
			for i, env := range p.Spec.Containers[0].Env {
				if env.Name == "PIGGY_UID" {
					p.Spec.Containers[0].Env[i].Value = uid
				}
			}
		})},
		{name: "uid that is not the container's", pod: mutated(func(p *corev1.Pod) {
			p.Annotations[podidentity.AnnotationKey] = strings.Replace(p.Annotations[podidentity.AnnotationKey], envOf(p.Spec.Containers[0], "PIGGY_UID"), uid, 1)
		}), want: `piggy: annotation piggysec.com/piggy-uid does not match what Piggy set for container "app"` + recreated},
		{name: "another signature", pod: mutated(func(p *corev1.Pod) { p.Spec.Containers[0].Args = []string{"--", "/bin/sh", "-c", "env"} }),
			want: `piggy: annotation piggysec.com/piggy-uid does not match what Piggy set for container "app"` + recreated},
		{name: "second PIGGY_UID", pod: mutated(container(func(c *corev1.Container) { c.Env = append([]corev1.EnvVar{{Name: "PIGGY_UID", Value: uid}}, c.Env...) })),
			want: `piggy: annotation piggysec.com/piggy-uid does not match what Piggy set for container "app"` + recreated},
		{name: "unreadable annotation", pod: mutated(func(p *corev1.Pod) { p.Annotations[podidentity.AnnotationKey] = "{bad" }),
			want: `piggy: annotation piggysec.com/piggy-uid is not what Piggy wrote` + recreated},
		{name: "identity of a container Piggy did not launch", pod: mutated(func(p *corev1.Pod) {
			ids, _ := podidentity.Parse(p.Annotations[podidentity.AnnotationKey])
			ids["ghost"] = podidentity.Entry{UID: uid, Signature: "s"}
			p.Annotations[podidentity.AnnotationKey] = ids.Format()
		}), want: `piggy: annotation piggysec.com/piggy-uid has an identity for container "ghost", which Piggy did not launch` + recreated},
		{name: "identity of a launched container removed", pod: mutated(func(p *corev1.Pod) {
			ids, _ := podidentity.Parse(p.Annotations[podidentity.AnnotationKey])
			delete(ids, "worker")
			p.Annotations[podidentity.AnnotationKey] = ids.Format()
		}), want: `piggy: annotation piggysec.com/piggy-uid does not match what Piggy set for container "worker"` + recreated},
		{name: "PIGGY_UID on a container Piggy did not launch", pod: mutated(func(p *corev1.Pod) {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "late", Image: "l", Env: []corev1.EnvVar{{Name: "PIGGY_UID", Value: uid}}})
		}), want: `piggy: container "late" sets PIGGY_UID, which is reserved for Piggy; remove it`},
		{name: "another broker address after Piggy's", pod: mutated(container(func(c *corev1.Container) {
			c.Env = append(c.Env, corev1.EnvVar{Name: "PIGGY_ADDRESS", Value: "https://evil.example"})
		})), want: `piggy: container "app" starts through /piggy/piggy-env but PIGGY_ADDRESS is not what Piggy set` + recreated},
		{name: "TLS verification turned off from a ConfigMap", pod: mutated(container(func(c *corev1.Container) {
			c.Env = append(c.Env, corev1.EnvVar{Name: "PIGGY_SKIP_VERIFY_TLS", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{Key: "k"}}})
		})), want: `piggy: container "app" starts through /piggy/piggy-env but PIGGY_SKIP_VERIFY_TLS is not what Piggy set` + recreated},
		{name: "token mounted elsewhere", pod: mutated(container(func(c *corev1.Container) {
			for i := range c.VolumeMounts {
				if c.VolumeMounts[i].Name == TokenVolumeName {
					c.VolumeMounts[i].MountPath = "/elsewhere"
				}
			}
		})), want: `piggy: container "app" starts through /piggy/piggy-env but does not mount volume "piggy-token" as Piggy set it` + recreated},
		{name: "piggy-env started otherwise", pod: mutated(func(p *corev1.Pod) {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "late", Image: "l", Command: []string{LauncherPath, "/sh"}})
		}), want: `piggy: container "late" already starts through /piggy/piggy-env, which only Piggy sets up; give it its own command`},
		{name: "annotation on a standalone pod", pod: func(t *testing.T) *corev1.Pod {
			pod, _ := podJSON(t, `{"metadata": {"name": "web", "annotations": {"piggysec.com/standalone": "true", "piggysec.com/piggy-uid": "{}"}}, "spec": {"containers": [`+app+`]}}`)
			return pod
		}, want: `piggy: annotation piggysec.com/piggy-uid is written by Piggy; remove it`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := tt.pod(t)
			mm := m
			if tt.cfg.TokenExpiration != 0 {
				mm = newTestMutator(tt.cfg, &fakeResolver{}, fakeEnv{})
			}
			out := mm.Mutate(t.Context(), pod, "team")
			if out.Denied != tt.want {
				t.Fatalf("denied = %q, want %q", out.Denied, tt.want)
			}
			if tt.want == "" && len(out.Patch) != 0 {
				t.Errorf("patch %v, want none", out.Patch)
			}
		})
	}
}

func TestReservedNamesStandaloneReinvocation(t *testing.T) {
	m := newTestMutator(Config{Defaults: podsettings.Defaults{Values: map[string]string{"piggy-address": broker}}}, &fakeResolver{}, fakeEnv{})
	_, raw := podJSON(t, `{"metadata": {"name": "web", "annotations": {"piggysec.com/standalone": "true"}},
		"spec": {"containers": [{"name": "app", "image": "a", "command": ["/app"], "env": [{"name": "A", "value": "piggy:A"}]}]}}`)
	first := m.Mutate(t.Context(), mustPod(t, raw), "team")
	if first.Denied != "" || len(first.Patch) == 0 {
		t.Fatalf("first pass: denied %q, patch %v", first.Denied, first.Patch)
	}
	mutated := apply(t, raw, first.Patch)
	if again := m.Mutate(t.Context(), mustPod(t, mutated), "team"); again.Denied != "" || len(again.Patch) != 0 {
		t.Fatalf("re-invocation: denied %q, patch %v", again.Denied, again.Patch)
	}
	// Another default secret than the one Piggy gave the container.
	forged := mustPod(t, mutated)
	forged.Spec.Containers[0].Env = append(forged.Spec.Containers[0].Env, corev1.EnvVar{Name: "PIGGY_AWS_SECRET_NAME", Value: "other/app"})
	if out := m.Mutate(t.Context(), forged, "team"); !strings.Contains(out.Denied, "PIGGY_AWS_SECRET_NAME is not what Piggy set") {
		t.Errorf("denied = %q, want the secret name refused", out.Denied)
	}
}

func mustPod(t *testing.T, raw []byte) *corev1.Pod {
	t.Helper()
	var p corev1.Pod
	if err := json.Unmarshal(raw, &p); err != nil {
		t.Fatal(err)
	}
	return &p
}

func envOf(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// piggy-env reads PIGGY_RETRIES as retries after the first attempt; the
// original's piggy-number-of-retry counts attempts and arrives converted.
func TestRetryEnv(t *testing.T) {
	tests := []struct {
		name        string
		annotations string
		defaults    map[string]string
		want        string
	}{
		{"unset", ``, nil, ""},
		{"original name, 3 attempts", `, "piggysec.com/piggy-number-of-retry": "3"`, nil, "2"},
		{"original name, 1 attempt", `, "piggysec.com/piggy-number-of-retry": "1"`, nil, ""},
		{"original name, junk", `, "piggysec.com/piggy-number-of-retry": "-2"`, nil, ""},
		{"retries", `, "piggysec.com/piggy-retries": "3"`, nil, "3"},
		{"cluster default with the original name", ``, map[string]string{podsettings.NumberOfRetry: "4"}, "3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newTestMutator(Config{Defaults: podsettings.Defaults{Values: tt.defaults}}, &fakeResolver{}, fakeEnv{})
			pod, raw := podJSON(t, `{"metadata": {"name": "web", "annotations": {"piggysec.com/piggy-address": "`+broker+`"`+tt.annotations+`}},
				"spec": {"containers": [{"name": "app", "image": "a", "command": ["/app"], "env": [{"name": "A", "value": "piggy:A"}]}]}}`)
			out := m.Mutate(t.Context(), pod, "team")
			if out.Denied != "" {
				t.Fatalf("denied: %s", out.Denied)
			}
			c := mustPod(t, apply(t, raw, out.Patch)).Spec.Containers[0]
			if got := envOf(c, "PIGGY_RETRIES"); got != tt.want {
				t.Errorf("PIGGY_RETRIES = %q, want %q", got, tt.want)
			}
			if got := envOf(c, "PIGGY_NUMBER_OF_RETRY"); got != "" {
				t.Errorf("PIGGY_NUMBER_OF_RETRY = %q, want it unset (piggy-env reads it as attempts)", got)
			}
		})
	}
}
