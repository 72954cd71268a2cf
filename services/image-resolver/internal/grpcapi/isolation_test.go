package grpcapi_test

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	imageresolverv1 "github.com/piggysec/piggy/libs/gen/piggy/imageresolver/v1"
	"github.com/piggysec/piggy/libs/registrytest"
	"github.com/piggysec/piggy/services/image-resolver/internal/resolve"
)

// TestIndexNamingAnotherTenantsDigest is the admission issue's first
// attack: a victim's private image was resolved with its pull secret, so
// its config is cached. An attacker's registry (with a certificate the
// resolver trusts) serves an index whose only child is the victim's
// digest. The attacker, with no credentials, must not get the victim's
// command line from the cache: the child must come from the attacker's
// own repository, which does not have it.
func TestIndexNamingAnotherTenantsDigest(t *testing.T) {
	f := newFixture(t)
	attacker := registrytest.New(t, registrytest.Options{})
	r, _ := newResolver(t, pool(f.pub, f.priv, attacker), f.objs)
	client := serveGRPC(t, r)

	victim, err := client.ResolveImage(t.Context(), &imageresolverv1.ResolveImageRequest{Image: f.priv.Ref("private/app:1"), Namespace: ns, PullSecrets: secrets("regcred")})
	if err != nil {
		t.Fatalf("victim's lookup: %v", err)
	}
	index, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []map[string]any{{
			"mediaType": "application/vnd.oci.image.manifest.v1+json",
			"digest":    victim.GetDigest(),
			"size":      500,
			"platform":  map[string]string{"os": "linux", "architecture": "amd64"},
		}},
	})
	attacker.ServeRawManifest("evil/app:1", "application/vnd.oci.image.index.v1+json", index)

	got, err := client.ResolveImage(t.Context(), &imageresolverv1.ResolveImageRequest{Image: attacker.Ref("evil/app:1"), Namespace: "attacker"})
	if err == nil {
		t.Fatalf("attacker got entrypoint %q cmd %q of the victim's image", got.GetEntrypoint(), got.GetCmd())
	}
	if status.Code(err) != codes.NotFound {
		t.Errorf("attacker's lookup: %v, want NotFound", err)
	}
	for _, leak := range []string{"/bin/private", "--secret-flag", f.priv.Host} {
		if strings.Contains(status.Convert(err).Message(), leak) {
			t.Errorf("message %q names %q", status.Convert(err).Message(), leak)
		}
	}
}

// TestPullSecretOfAnotherNamespace is the admission issue's second attack
// as the resolver sees it: a request for a pod in one namespace names a
// pull secret of another namespace (a gateway bug, or a forged call). The
// resolver refuses it before reading anything, with one message whether
// or not the secret exists, unless its own operator setting shares that
// namespace.
func TestPullSecretOfAnotherNamespace(t *testing.T) {
	f := newFixture(t)
	image := f.priv.Ref("private/app:1")
	t.Run("refused by default", func(t *testing.T) {
		r, cs := newResolver(t, pool(f.pub, f.priv), f.objs)
		client := serveGRPC(t, r)
		for _, secret := range []string{"other/shared", "other/does-not-exist"} {
			got, err := client.ResolveImage(t.Context(), &imageresolverv1.ResolveImageRequest{Image: image, Namespace: "attacker", PullSecrets: secrets(secret)})
			if err == nil {
				t.Fatalf("pull secret %s: resolved with entrypoint %q cmd %q", secret, got.GetEntrypoint(), got.GetCmd())
			}
			_, name, _ := strings.Cut(secret, "/")
			want := `pull secret "` + name + `" names namespace "other": pull secret outside the pod's namespace; only the pod's own namespace and those the operator allows (--pull-secret-namespaces) may be used`
			if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != want {
				t.Errorf("pull secret %s: %v, want PermissionDenied %q", secret, err, want)
			}
		}
		for _, a := range cs.Actions() {
			if a.GetNamespace() == "other" {
				t.Errorf("the resolver read %s %s in the other namespace", a.GetVerb(), a.GetResource().Resource)
			}
		}
	})
	t.Run("allowed when the operator shares the namespace", func(t *testing.T) {
		r, _ := newResolver(t, pool(f.pub, f.priv), f.objs, func(o *resolve.Options) {
			o.Keychain.AllowNamespaces("other")
		})
		client := serveGRPC(t, r)
		got, err := client.ResolveImage(t.Context(), &imageresolverv1.ResolveImageRequest{Image: image, Namespace: "attacker", PullSecrets: secrets("other/shared")})
		if err != nil || got.GetDigest() != f.digests["private/app:1"] {
			t.Fatalf("shared pull secret: %v, digest %q", err, got.GetDigest())
		}
	})
}

// TestInternalDestinations is the admission issue's network probing
// attack: a pod creator names registries on loopback (here standing for
// every internal network) to learn what answers where from the
// resolver's distinct errors. By default the resolver connects to none of
// them and gives one message whatever is there: a registry, a closed
// port, a silent listener, a name resolving to loopback, or a redirect
// from a reachable registry to one. The operator can allow a registry by
// name or a network; its errors then stay specific.
func TestInternalDestinations(t *testing.T) {
	reg := registrytest.New(t, registrytest.Options{})
	reg.Push(t, "app:1", registrytest.Image(t, "linux/amd64", []string{"/bin/app"}, nil))
	closed, silent := registrytest.ClosedPort(t), registrytest.Blackhole(t)
	// front is a registry the operator allows by name that redirects every
	// manifest request to the internal one, as registries redirect blobs.
	front := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/v2/" {
			return
		}
		http.Redirect(w, req, "https://"+reg.Host+req.URL.Path, http.StatusTemporaryRedirect)
	}))
	t.Cleanup(front.Close)
	frontHost := strings.TrimPrefix(front.URL, "https://")
	_, regPort, _ := net.SplitHostPort(reg.Host)
	roots := pool(reg)
	roots.AddCert(front.Certificate())
	lookup := func(t *testing.T, d resolve.Destinations, image string) error {
		r, _ := newResolver(t, roots, nil, func(o *resolve.Options) { o.Destinations, o.Timeout = d, 2*time.Second })
		_, err := serveGRPC(t, r).ResolveImage(t.Context(), &imageresolverv1.ResolveImageRequest{Image: image})
		return err
	}

	for _, tt := range []struct{ name, image, registry string }{
		{"a registry", reg.Ref("app:1"), reg.Host},
		{"a closed port", closed + "/app:1", closed},
		{"a silent listener", silent + "/app:1", silent},
		{"a name resolving to loopback", "localhost:" + regPort + "/app:1", "localhost:" + regPort},
		{"a redirect from an allowed registry", frontHost + "/app:1", frontHost},
	} {
		t.Run("refused: "+tt.name, func(t *testing.T) {
			before := reg.Requests()
			err := lookup(t, resolve.Destinations{Registries: []string{frontHost}}, tt.image)
			if want := "registry " + tt.registry + " is not allowed"; status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != want {
				t.Errorf("%v, want PermissionDenied %q", err, want)
			}
			if got := reg.Requests() - before; got != 0 {
				t.Errorf("the internal registry served %d requests", got)
			}
		})
	}
	t.Run("allowed by name", func(t *testing.T) {
		if err := lookup(t, resolve.Destinations{Registries: []string{reg.Host}}, reg.Ref("app:1")); err != nil {
			t.Errorf("allowed registry: %v", err)
		}
		err := lookup(t, resolve.Destinations{Registries: []string{closed}}, closed+"/app:1")
		if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "unreachable") {
			t.Errorf("allowed closed port: %v, want the specific Unavailable message", err)
		}
	})
	t.Run("allowed by network", func(t *testing.T) {
		if err := lookup(t, resolve.Destinations{Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}, frontHost+"/app:1"); err != nil {
			t.Errorf("redirect within an allowed network: %v", err)
		}
	})
}
