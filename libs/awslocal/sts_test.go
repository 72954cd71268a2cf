package awslocal_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	ststypes "github.com/aws/aws-sdk-go-v2/service/sts/types"
	"github.com/google/go-cmp/cmp"

	"github.com/piggysec/piggy/libs/awslocal"
)

const testRole = "arn:aws:iam::111122223333:role/piggy-app"

// irsaEnv sets up the environment a pod with IRSA gets, pointed at ts.
func irsaEnv(t *testing.T, ts *httptest.Server, token string) {
	t.Helper()
	isolateEnv(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_ROLE_ARN", testRole)
	t.Setenv("AWS_WEB_IDENTITY_TOKEN_FILE", tokenFile)
	t.Setenv("AWS_REGION", testRegion)
	t.Setenv("AWS_ENDPOINT_URL", ts.URL)
	// The web identity provider's own STS client only follows this one.
	t.Setenv("AWS_ENDPOINT_URL_STS", ts.URL)
}

// caClient is an SDK HTTP client trusting only ts's certificate.
func caClient(ts *httptest.Server) *awshttp.BuildableClient {
	pool := x509.NewCertPool()
	pool.AddCert(ts.Certificate())
	return awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	})
}

// TestIRSA runs the whole IRSA path over TLS: the SDK reads AWS_ROLE_ARN and
// the token file, calls AssumeRoleWithWebIdentity, and signs Secrets Manager
// calls with the session credentials.
func TestIRSA(t *testing.T) {
	p := newIDP(t)
	srv, err := awslocal.New(awslocal.Options{
		Region:      testRegion,
		WebIdentity: &awslocal.WebIdentity{Issuer: p.issuer, Audience: "sts.amazonaws.com", JWKS: p.jwks(t)},
		Trust:       map[string][]string{testRole: {"system:serviceaccount:apps:*"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewTLSServer(srv)
	t.Cleanup(ts.Close)
	v1, err := srv.PutSecretString("apps/db", `{"password":"one"}`)
	if err != nil {
		t.Fatal(err)
	}
	v2, err := srv.PutSecretString("apps/db", `{"password":"two"}`)
	if err != nil {
		t.Fatal(err)
	}
	arn := srv.SecretARN("apps/db")

	irsaEnv(t, ts, p.token(t, p.serviceAccountClaims("system:serviceaccount:apps:web")))
	cfg, err := config.LoadDefaultConfig(t.Context(), config.WithHTTPClient(caClient(ts)))
	if err != nil {
		t.Fatal(err)
	}
	creds, err := cfg.Credentials.Retrieve(t.Context())
	if err != nil {
		t.Fatalf("retrieve web identity credentials: %v", err)
	}
	if !strings.HasPrefix(creds.AccessKeyID, "ASIA") || creds.SessionToken == "" || !creds.CanExpire {
		t.Errorf("credentials = key %q, token set %v, can expire %v; want session credentials", creds.AccessKeyID, creds.SessionToken != "", creds.CanExpire)
	}

	type result struct {
		Value, VersionID string
		Stages           []string
	}
	client := secretsmanager.NewFromConfig(cfg)
	tests := []struct {
		name string
		in   secretsmanager.GetSecretValueInput
		want result
	}{
		{"current by default", secretsmanager.GetSecretValueInput{SecretId: aws.String("apps/db")},
			result{`{"password":"two"}`, v2, []string{"AWSCURRENT"}}},
		{"previous by stage", secretsmanager.GetSecretValueInput{SecretId: aws.String("apps/db"), VersionStage: aws.String("AWSPREVIOUS")},
			result{`{"password":"one"}`, v1, []string{"AWSPREVIOUS"}}},
		{"by version id", secretsmanager.GetSecretValueInput{SecretId: aws.String("apps/db"), VersionId: aws.String(v1)},
			result{`{"password":"one"}`, v1, []string{"AWSPREVIOUS"}}},
		{"by full ARN", secretsmanager.GetSecretValueInput{SecretId: aws.String(arn)},
			result{`{"password":"two"}`, v2, []string{"AWSCURRENT"}}},
		{"by partial ARN", secretsmanager.GetSecretValueInput{SecretId: aws.String(arn[:len(arn)-7])},
			result{`{"password":"two"}`, v2, []string{"AWSCURRENT"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := client.GetSecretValue(t.Context(), &tt.in)
			if err != nil {
				t.Fatalf("GetSecretValue: %v", err)
			}
			got := result{aws.ToString(out.SecretString), aws.ToString(out.VersionId), out.VersionStages}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("GetSecretValue (-want +got):\n%s", diff)
			}
			if aws.ToString(out.ARN) != arn || aws.ToString(out.Name) != "apps/db" {
				t.Errorf("ARN, Name = %q, %q; want %q, apps/db", aws.ToString(out.ARN), aws.ToString(out.Name), arn)
			}
		})
	}
	if got := srv.Calls(awslocal.ServiceSTS, "AssumeRoleWithWebIdentity"); got != 1 {
		t.Errorf("AssumeRoleWithWebIdentity calls = %d, want 1 (credentials are cached)", got)
	}
}

// TestTLSNeedsCA checks the TLS server is not trusted without its CA.
func TestTLSNeedsCA(t *testing.T) {
	srv, err := awslocal.New(awslocal.Options{Region: testRegion, StaticCredentials: []awslocal.StaticCredentials{{AccessKeyID: testKeyID, SecretAccessKey: testSecret}}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(srv)
	ts.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake is expected
	ts.StartTLS()
	t.Cleanup(ts.Close)
	if _, err := srv.PutSecretString("s", "v"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		client  aws.HTTPClient
		wantErr bool
	}{
		{"custom CA", caClient(ts), false},
		{"system roots", awshttp.NewBuildableClient(), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := staticConfig(t, ts, testKeyID, testSecret, "", testRegion, config.WithHTTPClient(tt.client))
			_, err := secretsmanager.NewFromConfig(cfg).GetSecretValue(t.Context(), &secretsmanager.GetSecretValueInput{SecretId: aws.String("s")})
			var certErr *tls.CertificateVerificationError
			if tt.wantErr != (err != nil) || (tt.wantErr && !errors.As(err, &certErr)) {
				t.Errorf("GetSecretValue error = %v, want certificate error %v", err, tt.wantErr)
			}
		})
	}
}

// TestCredentialRefresh checks that expired session credentials make the
// SDK assume the role again.
func TestCredentialRefresh(t *testing.T) {
	p := newIDP(t)
	srv, ts := newServer(t, awslocal.Options{
		CredentialDuration: 2 * time.Second,
		WebIdentity:        &awslocal.WebIdentity{Issuer: p.issuer, JWKS: p.jwks(t)},
	})
	if _, err := srv.PutSecretString("s", "v"); err != nil {
		t.Fatal(err)
	}
	irsaEnv(t, ts, p.token(t, p.serviceAccountClaims("system:serviceaccount:apps:web")))
	cfg, err := config.LoadDefaultConfig(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	client := secretsmanager.NewFromConfig(cfg)
	get := func() {
		t.Helper()
		if _, err := client.GetSecretValue(t.Context(), &secretsmanager.GetSecretValueInput{SecretId: aws.String("s")}); err != nil {
			t.Fatalf("GetSecretValue: %v", err)
		}
	}
	get()
	before := srv.Calls(awslocal.ServiceSTS, "AssumeRoleWithWebIdentity")
	time.Sleep(2100 * time.Millisecond) // past the credentials' expiry
	get()
	if after := srv.Calls(awslocal.ServiceSTS, "AssumeRoleWithWebIdentity"); after != before+1 {
		t.Errorf("AssumeRoleWithWebIdentity calls: %d before expiry, %d after; want one more", before, after)
	}
}

func TestAssumeRoleWithWebIdentityErrors(t *testing.T) {
	p := newIDP(t)
	other := newIDP(t)
	_, ts := newServer(t, awslocal.Options{
		WebIdentity: &awslocal.WebIdentity{Issuer: p.issuer, Audience: "sts.amazonaws.com", JWKS: p.jwks(t)},
		Trust: map[string][]string{
			testRole:                                {"system:serviceaccount:apps:*"},
			"arn:aws:iam::111122223333:role/anyone": nil,
		},
	})
	cfg := staticConfig(t, ts, testKeyID, testSecret, "", testRegion)
	client := sts.NewFromConfig(cfg, func(o *sts.Options) { o.Retryer = aws.NopRetryer{} })

	good := p.serviceAccountClaims("system:serviceaccount:apps:web")
	with := func(k string, v any) map[string]any {
		c := map[string]any{}
		for kk, vv := range good {
			c[kk] = vv
		}
		c[k] = v
		return c
	}
	unsigned := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none"}`)) + "." +
		strings.Split(p.token(t, good), ".")[1] + "."
	isInvalidToken := func(err error) bool { var e *ststypes.InvalidIdentityTokenException; return errors.As(err, &e) }
	isExpired := func(err error) bool { var e *ststypes.ExpiredTokenException; return errors.As(err, &e) }

	tests := []struct {
		name     string
		role     string
		session  string
		token    string
		duration *int32
		want     apiErr
		typed    func(error) bool
	}{
		{name: "valid", token: p.token(t, good)},
		{name: "valid any subject", role: "arn:aws:iam::111122223333:role/anyone", token: p.token(t, with("sub", "someone"))},
		{name: "valid duration", token: p.token(t, good), duration: aws.Int32(900)},
		{name: "two parts", token: "abc.def", want: apiErr{"InvalidIdentityToken", 400}, typed: isInvalidToken},
		{name: "not base64 JSON", token: "a.b.c", want: apiErr{"InvalidIdentityToken", 400}, typed: isInvalidToken},
		{name: "alg none", token: unsigned, want: apiErr{"InvalidIdentityToken", 400}, typed: isInvalidToken},
		{name: "signed by another key", token: other.token(t, good), want: apiErr{"InvalidIdentityToken", 400}, typed: isInvalidToken},
		{name: "wrong issuer", token: p.token(t, with("iss", "https://evil.test")), want: apiErr{"InvalidIdentityToken", 400}, typed: isInvalidToken},
		{name: "wrong audience", token: p.token(t, with("aud", "vault")), want: apiErr{"InvalidIdentityToken", 400}, typed: isInvalidToken},
		{name: "no expiry", token: p.token(t, with("exp", nil)), want: apiErr{"InvalidIdentityToken", 400}, typed: isInvalidToken},
		{name: "expired", token: p.token(t, with("exp", time.Now().Add(-time.Minute).Unix())), want: apiErr{"ExpiredTokenException", 400}, typed: isExpired},
		{name: "malformed role ARN", role: "arn:aws:iam::1234:role/x", token: p.token(t, good), want: apiErr{"ValidationError", 400}},
		{name: "user ARN", role: "arn:aws:iam::111122223333:user/x", token: p.token(t, good), want: apiErr{"ValidationError", 400}},
		{name: "bad session name", session: "a b", token: p.token(t, good), want: apiErr{"ValidationError", 400}},
		{name: "duration too short", token: p.token(t, good), duration: aws.Int32(60), want: apiErr{"ValidationError", 400}},
		{name: "untrusted subject", token: p.token(t, with("sub", "system:serviceaccount:other:web")), want: apiErr{"AccessDenied", 403}},
		{name: "untrusted role", role: "arn:aws:iam::111122223333:role/admin", token: p.token(t, good), want: apiErr{"AccessDenied", 403}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			role, session := tt.role, tt.session
			if role == "" {
				role = testRole
			}
			if session == "" {
				session = "piggy-test"
			}
			out, err := client.AssumeRoleWithWebIdentity(t.Context(), &sts.AssumeRoleWithWebIdentityInput{
				RoleArn: aws.String(role), RoleSessionName: aws.String(session), WebIdentityToken: aws.String(tt.token), DurationSeconds: tt.duration,
			})
			if diff := cmp.Diff(tt.want, describe(err)); diff != "" {
				t.Fatalf("error (-want +got):\n%s\nerr: %v", diff, err)
			}
			if tt.typed != nil && !tt.typed(err) {
				t.Errorf("error %T is not the SDK's typed error", err)
			}
			if err != nil {
				return
			}
			roleName := role[strings.LastIndex(role, "/")+1:]
			wantUser := "arn:aws:sts::111122223333:assumed-role/" + roleName + "/" + session
			if got := aws.ToString(out.AssumedRoleUser.Arn); got != wantUser {
				t.Errorf("AssumedRoleUser.Arn = %q, want %q", got, wantUser)
			}
			if aws.ToString(out.SubjectFromWebIdentityToken) == "" || aws.ToString(out.Credentials.SessionToken) == "" {
				t.Errorf("missing subject or session token in %+v", out)
			}
			wantLife := time.Hour
			if tt.duration != nil {
				wantLife = time.Duration(*tt.duration) * time.Second
			}
			if life := time.Until(aws.ToTime(out.Credentials.Expiration)); life > wantLife || life < wantLife-time.Minute {
				t.Errorf("credentials live %v, want about %v", life, wantLife)
			}
		})
	}
}

// TestSTSMalformedRequests sends hand-built query-protocol requests.
func TestSTSMalformedRequests(t *testing.T) {
	_, ts := newServer(t, awslocal.Options{})
	form := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	tests := []struct {
		name, body string
		wantStatus int
		wantCode   string
	}{
		{"no action", "Version=2011-06-15", 400, "<Code>MissingAction</Code>"},
		{"unknown action", "Action=GetCallerIdentity&Version=2011-06-15", 400, "<Code>InvalidAction</Code>"},
		{"bad version", "Action=AssumeRoleWithWebIdentity&Version=2020-01-01", 400, "<Code>InvalidAction</Code>"},
		{"missing fields", "Action=AssumeRoleWithWebIdentity&Version=2011-06-15", 400, "<Code>ValidationError</Code>"},
		{"bad escape", "Action=%zz", 400, "<Code>MalformedQueryString</Code>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := rawPost(t, ts.URL, form, tt.body)
			body := readAll(t, resp)
			if resp.StatusCode != tt.wantStatus || !strings.Contains(body, tt.wantCode) || !strings.Contains(body, "<ErrorResponse") {
				t.Errorf("got %d %s; want %d with %s", resp.StatusCode, body, tt.wantStatus, tt.wantCode)
			}
		})
	}
}
