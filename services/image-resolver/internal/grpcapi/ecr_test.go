package grpcapi_test

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/piggysec/piggy/libs/awslocal"
	imageresolverv1 "github.com/piggysec/piggy/libs/gen/piggy/imageresolver/v1"
	"github.com/piggysec/piggy/libs/registrytest"
	"github.com/piggysec/piggy/services/image-resolver/internal/ecrauth/ecrauthtest"
	"github.com/piggysec/piggy/services/image-resolver/internal/keychain"
	"github.com/piggysec/piggy/services/image-resolver/internal/resolve"
)

// TestECRCredentials resolves, over gRPC, an image from a registry that
// only accepts the token awslocal issues, with no pull secret; then shows
// that an AWS outage is reported as Unauthenticated naming ECR.
func TestECRCredentials(t *testing.T) {
	env := ecrauthtest.New(t)
	env.Registry.Push(t, "private/app:1", registrytest.Image(t, "linux/amd64", []string{"/srv"}, []string{"--serve"}))
	env.Registry.Push(t, "private/app:2", registrytest.Image(t, "linux/amd64", []string{"/srv2"}, nil))
	r, _ := newResolver(t, env.Registry.CertPool(), nil, func(o *resolve.Options) { o.Keychain = keychain.New(nil, env.Keychain) })
	client := serveGRPC(t, r)

	for _, tag := range []string{"1", "2", "1"} {
		got, err := client.ResolveImage(t.Context(), &imageresolverv1.ResolveImageRequest{Image: env.Registry.Ref("private/app:" + tag), Namespace: "team"})
		if err != nil {
			t.Fatalf("ResolveImage(app:%s) = %v", tag, err)
		}
		if tag == "1" && !slices.Equal(got.GetEntrypoint(), []string{"/srv"}) {
			t.Errorf("entrypoint = %q", got.GetEntrypoint())
		}
	}
	if got := env.TokenCalls(); got != 1 {
		t.Errorf("GetAuthorizationToken calls = %d, want 1", got)
	}
	ex, err := client.ExplainImage(t.Context(), &imageresolverv1.ExplainImageRequest{Lookup: &imageresolverv1.ResolveImageRequest{Image: env.Registry.Ref("private/app:2")}})
	if err != nil || ex.GetError() != "" {
		t.Fatalf("ExplainImage() = %v, %q", err, ex.GetError())
	}
	if want := "ECR credentials for region " + ecrauthtest.Region + ": has credentials for " + env.Registry.Host; !slices.Contains(ex.GetSteps(), want) {
		t.Errorf("steps %q lack %q", ex.GetSteps(), want)
	}

	// AWS goes away: a fresh resolver and keychain (no cached token) fail
	// as Unauthenticated, naming ECR and no secret.
	down := ecrauthtest.New(t)
	down.Registry.Push(t, "private/app:1", registrytest.Image(t, "linux/amd64", []string{"/srv"}, nil))
	if err := down.AWS.InjectFault(awslocal.Fault{Service: awslocal.ServiceECR, Operation: "GetAuthorizationToken", Kind: awslocal.FaultCloseConnection}); err != nil {
		t.Fatal(err)
	}
	r2, _ := newResolver(t, down.Registry.CertPool(), nil, func(o *resolve.Options) { o.Keychain = keychain.New(nil, down.Keychain) })
	client2 := serveGRPC(t, r2)
	_, err = client2.ResolveImage(t.Context(), &imageresolverv1.ResolveImageRequest{Image: down.Registry.Ref("private/app:1")})
	st := status.Convert(err)
	if st.Code() != codes.Unauthenticated {
		t.Fatalf("code = %v (%v), want Unauthenticated", st.Code(), err)
	}
	if want := "ECR credentials for region " + ecrauthtest.Region + ": AWS is unreachable"; !strings.Contains(st.Message(), want) {
		t.Errorf("message %q does not contain %q", st.Message(), want)
	}
	if strings.Contains(st.Message(), down.AWS.ECRPassword()) {
		t.Error("the message holds the ECR password")
	}
}
