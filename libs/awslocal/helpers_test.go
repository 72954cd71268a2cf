package awslocal_test

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/smithy-go"

	"github.com/piggysec/piggy/libs/awslocal"
)

// Static keys every test server accepts.
const (
	testKeyID  = "AKIAAWSLOCALTEST0001"
	testSecret = "awslocalTestSecretKey0000000000000000000"
	testRegion = "eu-west-3"
)

// newServer starts a plain-HTTP server with opts plus the test static keys.
func newServer(t *testing.T, opts awslocal.Options) (*awslocal.Server, *httptest.Server) {
	t.Helper()
	if opts.Region == "" {
		opts.Region = testRegion
	}
	opts.StaticCredentials = append(opts.StaticCredentials, awslocal.StaticCredentials{AccessKeyID: testKeyID, SecretAccessKey: testSecret})
	srv, err := awslocal.New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	return srv, ts
}

// isolateEnv makes config.LoadDefaultConfig ignore the machine's AWS setup.
func isolateEnv(t *testing.T) {
	t.Helper()
	for _, e := range os.Environ() {
		if k, _, _ := strings.Cut(e, "="); strings.HasPrefix(k, "AWS_") {
			t.Setenv(k, "") // restores the value after the test
			os.Unsetenv(k)
		}
	}
	dir := t.TempDir()
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
}

// noDelayRetryer is the SDK's standard retryer without backoff sleeps.
func noDelayRetryer() aws.Retryer {
	return retry.NewStandard(func(o *retry.StandardOptions) {
		o.Backoff = retry.BackoffDelayerFunc(func(int, error) (time.Duration, error) { return 0, nil })
	})
}

// staticConfig is an SDK config pointed at ts with static keys.
func staticConfig(t *testing.T, ts *httptest.Server, keyID, secret, token, region string, extra ...func(*config.LoadOptions) error) aws.Config {
	t.Helper()
	isolateEnv(t)
	opts := append([]func(*config.LoadOptions) error{
		config.WithRegion(region),
		config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(keyID, secret, token)),
		config.WithBaseEndpoint(ts.URL),
		config.WithHTTPClient(ts.Client()),
		config.WithRetryer(noDelayRetryer),
	}, extra...)
	cfg, err := config.LoadDefaultConfig(t.Context(), opts...)
	if err != nil {
		t.Fatalf("LoadDefaultConfig: %v", err)
	}
	return cfg
}

// idp is a test OIDC identity provider: an RSA key, its JWKS and tokens.
type idp struct {
	key    *rsa.PrivateKey
	kid    string
	issuer string
}

func newIDP(t *testing.T) *idp {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return &idp{key: key, kid: "test-key-1", issuer: "https://oidc.piggy.test/cluster"}
}

func (p *idp) jwks(t *testing.T) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "RSA", "use": "sig", "alg": "RS256", "kid": p.kid,
		"n": base64.RawURLEncoding.EncodeToString(p.key.N.Bytes()),
		"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(p.key.E)).Bytes()),
	}}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// serviceAccountClaims are the claims of a projected IRSA token.
func (p *idp) serviceAccountClaims(sub string) map[string]any {
	now := time.Now()
	return map[string]any{
		"iss": p.issuer, "sub": sub, "aud": []string{"sts.amazonaws.com"},
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}
}

// token signs claims with RS256.
func (p *idp) token(t *testing.T, claims map[string]any) string {
	t.Helper()
	header, _ := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT", "kid": p.kid})
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	signed := base64.RawURLEncoding.EncodeToString(header) + "." + base64.RawURLEncoding.EncodeToString(payload)
	digest := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(rand.Reader, p.key, crypto.SHA256, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// apiErr describes an SDK error as the caller sees it.
type apiErr struct {
	Code   string
	Status int
}

// describe extracts the API error code and HTTP status from an SDK error.
func describe(err error) apiErr {
	var out apiErr
	var ae smithy.APIError
	if errors.As(err, &ae) {
		out.Code = ae.ErrorCode()
	}
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		out.Status = re.HTTPStatusCode()
	}
	return out
}

// rawPost sends a hand-built request; only malformed-input tests use it.
func rawPost(t *testing.T, url string, header map[string]string, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
