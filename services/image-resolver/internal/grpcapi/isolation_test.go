package grpcapi_test

import (
	"encoding/json"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	imageresolverv1 "github.com/piggysec/piggy/libs/gen/piggy/imageresolver/v1"
	"github.com/piggysec/piggy/libs/registrytest"
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
