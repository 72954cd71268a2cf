// Package ecrauthtest wires the real parts of an ECR lookup for tests:
// awslocal over TLS issuing ECR tokens, a registry that requires the
// awslocal-issued password (user "AWS"), and an ecrauth.Keychain pointed at
// both.
package ecrauthtest

import (
	"net/http/httptest"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/piggysec/piggy/libs/awslocal"
	"github.com/piggysec/piggy/libs/registrytest"
	"github.com/piggysec/piggy/services/image-resolver/internal/ecrauth"
)

// Region is the region awslocal serves and the registry is mapped to.
const Region = "eu-west-3"

const (
	keyID  = "AKIAECRAUTHTEST00001"
	secret = "ecrauthTestSecretKey000000000000000000000"
)

// Env is a running ECR test setup.
type Env struct {
	// AWS is the awslocal server (fault injection, call counters, the ECR password).
	AWS *awslocal.Server
	// Registry requires basic auth with user "AWS" and AWS.ECRPassword().
	Registry *registrytest.Registry
	// Keychain serves Registry.Host with the token of Region.
	Keychain *ecrauth.Keychain
	// Config is the AWS configuration the keychain uses.
	Config aws.Config
}

// New starts awslocal over TLS and the registry, and builds the keychain;
// mods adjust its options (Config, Registries and NewClient are set).
func New(t testing.TB, mods ...func(*ecrauth.Options)) *Env {
	t.Helper()
	srv, err := awslocal.New(awslocal.Options{
		Region:            Region,
		StaticCredentials: []awslocal.StaticCredentials{{AccessKeyID: keyID, SecretAccessKey: secret}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewTLSServer(srv)
	t.Cleanup(ts.Close)
	reg := registrytest.New(t, registrytest.Options{Username: "AWS", Password: srv.ECRPassword()})
	cfg := aws.Config{
		Region:       "us-east-1", // unused: the region comes from the registry
		Credentials:  credentials.NewStaticCredentialsProvider(keyID, secret, ""),
		BaseEndpoint: aws.String(ts.URL),
		HTTPClient:   ts.Client(),
		Retryer: func() aws.Retryer {
			// The standard retryer (3 attempts) without backoff sleeps.
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.Backoff = retry.BackoffDelayerFunc(func(int, error) (time.Duration, error) { return 0, nil })
			})
		},
	}
	opts := ecrauth.Options{
		Config:     cfg,
		Registries: map[string]string{reg.Host: Region},
		Timeout:    4 * time.Second,
		FailureTTL: 5 * time.Second,
	}
	for _, m := range mods {
		m(&opts)
	}
	kc, err := ecrauth.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return &Env{AWS: srv, Registry: reg, Keychain: kc, Config: cfg}
}

// TokenCalls is how many GetAuthorizationToken calls awslocal received.
func (e *Env) TokenCalls() int { return e.AWS.Calls(awslocal.ServiceECR, "GetAuthorizationToken") }
