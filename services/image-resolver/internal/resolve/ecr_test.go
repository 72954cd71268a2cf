package resolve_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/piggysec/piggy/libs/awslocal"
	"github.com/piggysec/piggy/libs/registrytest"
	"github.com/piggysec/piggy/services/image-resolver/internal/ecrauth/ecrauthtest"
	"github.com/piggysec/piggy/services/image-resolver/internal/keychain"
	"github.com/piggysec/piggy/services/image-resolver/internal/resolve"
)

// TestECR resolves private images from a registry that only accepts the
// awslocal-issued ECR token, with no pull secret.
func TestECR(t *testing.T) {
	t.Run("resolves with one token for many lookups", func(t *testing.T) {
		env := ecrauthtest.New(t)
		for i := range 5 {
			env.Registry.Push(t, fmt.Sprintf("private/app:%d", i), registrytest.Image(t, "linux/amd64", []string{fmt.Sprint("/v", i)}, nil))
		}
		r := newResolver(t, env.Registry, nil, func(o *resolve.Options) { o.Keychain = keychain.New(nil, env.Keychain) })
		for i := range 5 {
			res, exp, err := r.Explain(t.Context(), resolve.Request{Image: env.Registry.Ref(fmt.Sprintf("private/app:%d", i)), Namespace: "team"})
			if err != nil {
				t.Fatalf("lookup %d: %v", i, err)
			}
			if want := fmt.Sprint("/v", i); !slices.Equal(res.Entrypoint, []string{want}) {
				t.Errorf("entrypoint = %q, want %q", res.Entrypoint, want)
			}
			want := "ECR credentials for region " + ecrauthtest.Region + ": has credentials for " + env.Registry.Host
			if !slices.Contains(exp.Steps, want) {
				t.Errorf("steps %q lack %q", exp.Steps, want)
			}
			if strings.Contains(strings.Join(exp.Steps, "\n"), env.AWS.ECRPassword()) {
				t.Error("a step holds the ECR password")
			}
		}
		if got := env.TokenCalls(); got != 1 {
			t.Errorf("GetAuthorizationToken calls = %d, want 1", got)
		}
	})

	t.Run("AWS unavailable: unauthenticated, naming ECR", func(t *testing.T) {
		env := ecrauthtest.New(t)
		env.Registry.Push(t, "private/app:1", registrytest.Image(t, "linux/amd64", []string{"/app"}, nil))
		if err := env.AWS.InjectFault(awslocal.Fault{Service: awslocal.ServiceECR, Kind: awslocal.FaultServerError}); err != nil {
			t.Fatal(err)
		}
		r := newResolver(t, env.Registry, nil, func(o *resolve.Options) { o.Keychain = keychain.New(nil, env.Keychain) })
		_, exp, err := r.Explain(t.Context(), resolve.Request{Image: env.Registry.Ref("private/app:1")})
		var e *resolve.Error
		if !errors.As(err, &e) || !errors.Is(err, resolve.ErrUnauthenticated) {
			t.Fatalf("error = %v, want unauthenticated", err)
		}
		if want := "ECR credentials for region " + ecrauthtest.Region + ": AWS answered ServerException"; !strings.Contains(e.Message, want) {
			t.Errorf("message %q does not contain %q", e.Message, want)
		}
		all := e.Message + strings.Join(exp.Steps, "\n")
		if strings.Contains(all, env.AWS.ECRPassword()) || strings.Contains(all, "ecrauthTestSecretKey") {
			t.Error("the message or steps hold a secret")
		}
		if env.TokenCalls() == 0 {
			t.Error("AWS was not asked")
		}
	})

	t.Run("ECR off: not used", func(t *testing.T) {
		env := ecrauthtest.New(t)
		env.Registry.Push(t, "private/app:1", registrytest.Image(t, "linux/amd64", []string{"/app"}, nil))
		r := newResolver(t, env.Registry, nil) // keychain.New(nil): no cloud source, as with --ecr=off
		_, err := r.Resolve(t.Context(), resolve.Request{Image: env.Registry.Ref("private/app:1")})
		if !errors.Is(err, resolve.ErrUnauthenticated) || strings.Contains(err.Error(), "ECR") {
			t.Errorf("error = %v, want unauthenticated without ECR", err)
		}
		if got := env.TokenCalls(); got != 0 {
			t.Errorf("GetAuthorizationToken calls = %d, want 0", got)
		}
	})
}
