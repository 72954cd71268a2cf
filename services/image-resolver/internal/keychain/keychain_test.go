package keychain_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/piggysec/piggy/libs/registrytest"
	"github.com/piggysec/piggy/services/image-resolver/internal/keychain"
)

const reg = "registry.example.com"

func objects() []runtime.Object {
	bad := registrytest.DockerConfigJSONSecret("team", "garbled", reg, "u", "p")
	bad.Data[corev1.DockerConfigJsonKey] = []byte(`{"auths": "TOPSECRET-garbage`)
	empty := registrytest.DockerConfigJSONSecret("team", "empty", reg, "u", "p")
	empty.Data = nil
	opaque := registrytest.DockerConfigJSONSecret("team", "opaque", reg, "u", "p")
	opaque.Type = corev1.SecretTypeOpaque
	return []runtime.Object{
		registrytest.DockerConfigJSONSecret("team", "alice", reg, "alice", "alice-pw"),
		registrytest.DockercfgSecret("team", "alice-legacy", reg, "alice", "alice-pw"),
		registrytest.DockerConfigJSONSecret("team", "bob", reg, "bob", "bob-pw"),
		registrytest.DockerConfigJSONSecret("team", "elsewhere", "other.example.com", "carol", "carol-pw"),
		bad, empty, opaque,
		registrytest.ServiceAccount("team", "default"),
		registrytest.ServiceAccount("team", "ci", "bob", "alice", "missing"),
	}
}

func TestGather(t *testing.T) {
	repo, err := name.NewRepository(reg + "/app")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name        string
		req         keychain.Request
		wantSources []string
		wantNotes   []string
		wantErr     error
	}{
		{
			name:        "request secrets first, then the service account's, without repeats",
			req:         keychain.Request{Namespace: "team", ServiceAccount: "ci", PullSecrets: []keychain.SecretRef{{Name: "alice"}, {Name: "nope"}}},
			wantSources: []string{"pull secret team/alice", "imagePullSecret of service account team/ci: team/bob"},
			wantNotes: []string{
				"pull secret team/alice: read (kubernetes.io/dockerconfigjson)",
				"pull secret team/nope: not found; continuing (Kubernetes semantics)",
				"imagePullSecret of service account team/ci: team/bob: read (kubernetes.io/dockerconfigjson)",
				"imagePullSecret of service account team/ci: team/alice: already considered",
				"imagePullSecret of service account team/ci: team/missing: not found; continuing (Kubernetes semantics)",
			},
		},
		{
			name:        "default service account, ignored secrets",
			req:         keychain.Request{Namespace: "team", PullSecrets: []keychain.SecretRef{{Name: "opaque"}, {Name: "empty"}, {Name: "alice-legacy"}}},
			wantSources: []string{"pull secret team/alice-legacy"},
			wantNotes: []string{
				`pull secret team/opaque: ignored (type "Opaque" is not a pull secret)`,
				"pull secret team/empty: ignored (no .dockerconfigjson data)",
				"pull secret team/alice-legacy: read (kubernetes.io/dockercfg)",
				"service account team/default: no imagePullSecrets",
			},
		},
		{
			name:      "missing service account",
			req:       keychain.Request{Namespace: "team", ServiceAccount: "ghost"},
			wantNotes: []string{"service account team/ghost: not found; continuing without its imagePullSecrets"},
		},
		{
			name:    "malformed secret fails without quoting it",
			req:     keychain.Request{Namespace: "team", PullSecrets: []keychain.SecretRef{{Name: "garbled"}}},
			wantErr: keychain.ErrInvalidSecret,
		},
		{
			name:    "refused read",
			req:     keychain.Request{Namespace: "locked", PullSecrets: []keychain.SecretRef{{Name: "x"}}},
			wantErr: keychain.ErrReadRefused,
		},
		{
			name:    "API failure",
			req:     keychain.Request{Namespace: "broken", ServiceAccount: "x"},
			wantErr: keychain.ErrKubernetes,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := fake.NewClientset(objects()...)
			cs.PrependReactor("get", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
				switch a.GetNamespace() {
				case "locked":
					return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, "x", errors.New("rbac"))
				case "broken":
					return true, nil, apierrors.NewServiceUnavailable("etcd is down")
				}
				return false, nil, nil
			})
			set, err := keychain.New(cs.CoreV1()).Gather(t.Context(), tt.req)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Gather() error = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				if strings.Contains(err.Error(), "TOPSECRET") {
					t.Errorf("error %q quotes secret data", err)
				}
				return
			}
			var sources []string
			for _, s := range set.Sources {
				sources = append(sources, s.Name)
			}
			if diff := cmp.Diff(tt.wantSources, sources); diff != "" {
				t.Errorf("sources mismatch (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantNotes, set.Notes); diff != "" {
				t.Errorf("notes mismatch (-want +got):\n%s", diff)
			}
			cands, err := set.For(t.Context(), repo)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range append(set.Notes, cands.Notes...) {
				for _, pw := range []string{"alice-pw", "bob-pw"} {
					if strings.Contains(n, pw) {
						t.Errorf("note %q leaks a password", n)
					}
				}
			}
		})
	}
}

func TestIdentity(t *testing.T) {
	g := keychain.New(fake.NewClientset(objects()...).CoreV1())
	repo, _ := name.NewRepository(reg + "/app")
	other, _ := name.NewRepository("other.example.com/app")
	identity := func(r name.Repository, secrets ...string) string {
		t.Helper()
		req := keychain.Request{Namespace: "team", ServiceAccount: "default"}
		for _, s := range secrets {
			req.PullSecrets = append(req.PullSecrets, keychain.SecretRef{Name: s})
		}
		set, err := g.Gather(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		c, err := set.For(t.Context(), r)
		if err != nil {
			t.Fatal(err)
		}
		return c.Identity
	}
	tests := []struct {
		name      string
		a, b      string
		wantEqual bool
	}{
		{"same credentials in two secret types", identity(repo, "alice"), identity(repo, "alice-legacy"), true},
		{"repeated credentials count once", identity(repo, "alice", "alice-legacy"), identity(repo, "alice"), true},
		{"different users", identity(repo, "alice"), identity(repo, "bob"), false},
		{"order matters", identity(repo, "alice", "bob"), identity(repo, "bob", "alice"), false},
		{"credentials for another registry are anonymous here", identity(repo, "elsewhere"), identity(repo), true},
		{"anonymous differs from credentials", identity(repo), identity(repo, "alice"), false},
		{"credentials for that registry", identity(other, "elsewhere"), identity(other), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if (tt.a == tt.b) != tt.wantEqual {
				t.Errorf("identities %q and %q: equal = %v, want %v", tt.a, tt.b, tt.a == tt.b, tt.wantEqual)
			}
			for _, id := range []string{tt.a, tt.b} {
				if strings.Contains(id, "pw") {
					t.Errorf("identity %q holds a password", id)
				}
			}
		})
	}
}
