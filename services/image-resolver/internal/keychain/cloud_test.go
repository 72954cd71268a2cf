package keychain_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/piggysec/piggy/libs/registrytest"
	"github.com/piggysec/piggy/services/image-resolver/internal/keychain"
)

// fakeCloud serves one registry with a token, or fails.
type fakeCloud struct {
	registry, region, token string
	err                     error
	calls                   int
}

func (f *fakeCloud) Describe(registry string) (string, bool) {
	return "ECR credentials for region " + f.region, registry == f.registry
}

func (f *fakeCloud) ResolveContext(_ context.Context, r authn.Resource) (authn.Authenticator, error) {
	f.calls++
	if f.err != nil {
		return nil, f.err
	}
	return authn.FromConfig(authn.AuthConfig{Username: "AWS", Password: f.token}), nil
}

func (f *fakeCloud) Resolve(r authn.Resource) (authn.Authenticator, error) {
	return f.ResolveContext(context.Background(), r)
}

func TestCloudSources(t *testing.T) {
	const ecrHost = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
	repo, _ := name.NewRepository(ecrHost + "/app")
	kube := fake.NewClientset(append(objects(), registrytest.DockerConfigJSONSecret("team", "ecr-static", ecrHost, "AWS", "static-pw"))...).CoreV1()
	// One gatherer (one HMAC key) whose cloud source each step reconfigures.
	cloud := &fakeCloud{registry: ecrHost}
	g := keychain.New(kube, cloud)
	candidates := func(t *testing.T, configure func(*fakeCloud), r name.Repository, secrets ...string) keychain.Candidates {
		t.Helper()
		*cloud = fakeCloud{registry: ecrHost}
		configure(cloud)
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
		return c
	}
	ok := func(region, token string) func(*fakeCloud) {
		return func(f *fakeCloud) { f.region, f.token = region, token }
	}
	failure := errors.New("ECR credentials for region eu-west-1: AWS answered ServerException")
	failing := func(f *fakeCloud) { f.region, f.err = "eu-west-1", failure }

	t.Run("used after the pull secrets", func(t *testing.T) {
		c := candidates(t, ok("eu-west-1", "tok-1"), repo, "ecr-static")
		var sources []string
		for _, cand := range c.List {
			sources = append(sources, cand.Source)
		}
		if want := []string{"pull secret team/ecr-static", "ECR credentials for region eu-west-1"}; !slices.Equal(sources, want) {
			t.Errorf("sources = %q, want %q", sources, want)
		}
	})
	t.Run("not asked for other registries", func(t *testing.T) {
		other, _ := name.NewRepository("registry.example.com/app")
		if c := candidates(t, ok("eu-west-1", "tok-1"), other); c.Identity != "anonymous" || cloud.calls != 0 {
			t.Errorf("identity %q, calls %d; want anonymous, 0", c.Identity, cloud.calls)
		}
	})
	t.Run("a failure is noted and the lookup goes on", func(t *testing.T) {
		c := candidates(t, failing, repo)
		if len(c.List) != 1 || c.List[0].Source != "anonymous" {
			t.Errorf("candidates = %+v, want anonymous only", c.List)
		}
		if want := []string{failure.Error()}; !slices.Equal(c.Unavailable, want) {
			t.Errorf("Unavailable = %q, want %q", c.Unavailable, want)
		}
		if !slices.ContainsFunc(c.Notes, func(n string) bool { return strings.HasPrefix(n, failure.Error()) }) {
			t.Errorf("notes %q do not mention the failure", c.Notes)
		}
	})

	ids := map[string]string{
		"anonymous (no cloud source)":    "anonymous",
		"anonymous after an ECR failure": candidates(t, failing, repo).Identity,
		"ECR token 1, eu-west-1":         candidates(t, ok("eu-west-1", "tok-1"), repo).Identity,
		"ECR token 2, eu-west-1":         candidates(t, ok("eu-west-1", "tok-2"), repo).Identity,
		"ECR token 1, eu-west-2":         candidates(t, ok("eu-west-2", "tok-1"), repo).Identity,
	}
	seen := map[string]string{}
	for what, id := range ids {
		if other, dup := seen[id]; dup {
			t.Errorf("%s and %s share identity %q", what, other, id)
		}
		seen[id] = what
		if strings.Contains(id, "tok-") {
			t.Errorf("identity %q holds the token", id)
		}
	}
	if a, b := candidates(t, ok("eu-west-1", "tok-1"), repo).Identity, ids["ECR token 1, eu-west-1"]; a != b {
		t.Error("the same token gives different identities")
	}
}
