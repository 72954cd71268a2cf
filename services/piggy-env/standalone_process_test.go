package main

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/piggysec/piggy/libs/awslocal"
)

// Names of the standalone tests' AWS world.
const (
	awsRegion  = "eu-west-3"
	awsRole    = "arn:aws:iam::111122223333:role/team-a-web"
	awsSubject = "system:serviceaccount:team-a:web"
	awsIssuer  = "https://oidc.piggy.test/cluster"
)

// awsWorld is an awslocal server over TLS with IRSA verification: the role
// trusts only the team-a/web service account and may read only team-a
// secrets and parameters.
type awsWorld struct {
	srv       *awslocal.Server
	ts        *httptest.Server
	caBundle  string // AWS_CA_BUNDLE for piggy-env
	tokenFile string // the projected IRSA token
}

func newAWSWorld(t *testing.T) *awsWorld {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	jwks, _ := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "RSA", "use": "sig", "alg": "RS256", "kid": "k1",
		"n": base64.RawURLEncoding.EncodeToString(key.N.Bytes()),
		"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(key.E)).Bytes()),
	}}})
	srv, err := awslocal.New(awslocal.Options{
		Region:      awsRegion,
		WebIdentity: &awslocal.WebIdentity{Issuer: awsIssuer, Audience: "sts.amazonaws.com", JWKS: jwks},
		Trust:       map[string][]string{awsRole: {awsSubject}},
		Allow:       map[string][]string{awsRole: {"team-a/*", "/team-a/*"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	w := &awsWorld{srv: srv, ts: httptest.NewTLSServer(srv)}
	t.Cleanup(w.ts.Close)
	dir := t.TempDir()
	w.caBundle = filepath.Join(dir, "aws-ca.pem")
	if err := os.WriteFile(w.caBundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: w.ts.Certificate().Raw}), 0o444); err != nil {
		t.Fatal(err)
	}
	w.tokenFile = filepath.Join(dir, "token")
	if err := os.WriteFile(w.tokenFile, []byte(signJWT(t, key, awsSubject)), 0o400); err != nil {
		t.Fatal(err)
	}
	return w
}

// signJWT returns an RS256 token like a projected IRSA token for sub.
func signJWT(t *testing.T, key *rsa.PrivateKey, sub string) string {
	t.Helper()
	now := time.Now()
	header, _ := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT", "kid": "k1"})
	claims, _ := json.Marshal(map[string]any{"iss": awsIssuer, "sub": sub, "aud": []string{"sts.amazonaws.com"},
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix()})
	signed := base64.RawURLEncoding.EncodeToString(header) + "." + base64.RawURLEncoding.EncodeToString(claims)
	digest := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// env is what an injected standalone pod with IRSA gets, plus extra.
func (w *awsWorld) env(extra ...string) []string {
	env := []string{
		"PATH=" + filepath.Dir(childBin) + ":/usr/bin:/bin",
		"PIGGY_STANDALONE=true",
		"PIGGY_UID=c0ffee-uid",
		"AWS_REGION=" + awsRegion,
		"AWS_ROLE_ARN=" + awsRole,
		"AWS_WEB_IDENTITY_TOKEN_FILE=" + w.tokenFile,
		"AWS_ENDPOINT_URL=" + w.ts.URL,
		"AWS_ENDPOINT_URL_STS=" + w.ts.URL,
		"AWS_CA_BUNDLE=" + w.caBundle,
	}
	return append(env, extra...)
}

func TestProcessStandaloneSecretsManager(t *testing.T) {
	t.Parallel()
	w := newAWSWorld(t)
	if _, err := w.srv.PutSecretString("team-a/web", `{"db":"old-password","PIGGY_ALLOWED_SA":"team-a:web"}`); err != nil {
		t.Fatal(err)
	}
	current, err := w.srv.PutSecretString("team-a/web", `{"db":"s3cr3t","port":5432,"tls":true,"PIGGY_ALLOWED_SA":"team-a:web"}`)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		version string
		refs    []string
		want    []string
	}{
		{
			name: "current by default", refs: []string{"DB_PASSWORD=piggy:db", "DB_PORT=piggy:port", "TLS=piggy:tls"},
			want: []string{"DB_PASSWORD=s3cr3t", "DB_PORT=5432", "TLS=true"},
		},
		{name: "previous stage", version: "AWSPREVIOUS", refs: []string{"DB_PASSWORD=piggy:db"}, want: []string{"DB_PASSWORD=old-password"}},
		{name: "version id", version: current, refs: []string{"DB_PASSWORD=piggy:db"}, want: []string{"DB_PASSWORD=s3cr3t"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			extra := append([]string{"PIGGY_AWS_SECRET_NAME=team-a/web", "PIGGY_AWS_SECRET_VERSION=" + tt.version, "CHILD_EXIT=3"}, tt.refs...)
			res := runPiggyEnv(t, w.env(extra...), "--", "child", "serve")
			// The original exited 1 here; standalone success must exec the app.
			if res.exitCode != 3 || res.child == nil {
				t.Fatalf("exit %d, child ran %v; stderr:\n%s", res.exitCode, res.child != nil, res.stderr)
			}
			if res.child.PID != res.pid {
				t.Errorf("child PID %d, piggy-env PID %d", res.child.PID, res.pid)
			}
			var got []string
			for _, kv := range res.child.Env {
				if strings.HasPrefix(kv, "DB_") || strings.HasPrefix(kv, "TLS=") || strings.HasPrefix(kv, "PIGGY_") {
					got = append(got, kv)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("child env mismatch (-want +got):\n%s", diff)
			}
			if !slices.Contains(res.messages(), "info: Request secrets was successful") {
				t.Errorf("no success line; logs: %v", res.messages())
			}
			for _, secret := range []string{"s3cr3t", "old-password"} {
				if strings.Contains(res.stderr, secret) {
					t.Errorf("stderr contains %q", secret)
				}
			}
		})
	}
}

func TestProcessStandaloneSSM(t *testing.T) {
	t.Parallel()
	w := newAWSWorld(t)
	// More than one page (awslocal caps pages at 10), nested paths.
	for i := range 14 {
		if _, err := w.srv.PutParameter(fmt.Sprintf("/team-a/web/filler/p%02d", i), awslocal.ParameterString, "x"); err != nil {
			t.Fatal(err)
		}
	}
	for name, value := range map[string]string{
		"/team-a/web/db/password": "s3cr3t", "/team-a/web/api-key": "k-123", "/team-a/web/PIGGY_ALLOWED_SA": "team-a:web",
		"/team-a/web/a/dup": "1", "/team-a/web/b/dup": "2",
	} {
		if _, err := w.srv.PutParameter(name, awslocal.ParameterSecureString, value); err != nil {
			t.Fatal(err)
		}
	}

	res := runPiggyEnv(t, w.env("PIGGY_AWS_SSM_PARAMETER_PATH=/team-a/web", "DB=piggy:password", "API=piggy:api-key", "LAST=piggy:p13"), "--", "child")
	if res.exitCode != 0 || res.child == nil {
		t.Fatalf("exit %d; stderr:\n%s", res.exitCode, res.stderr)
	}
	var got []string
	for _, kv := range res.child.Env {
		if strings.HasPrefix(kv, "DB=") || strings.HasPrefix(kv, "API=") || strings.HasPrefix(kv, "LAST=") {
			got = append(got, kv)
		}
	}
	if diff := cmp.Diff([]string{"DB=s3cr3t", "API=k-123", "LAST=x"}, got); diff != "" {
		t.Errorf("child env mismatch (-want +got):\n%s", diff)
	}
	if n := w.srv.Calls(awslocal.ServiceSSM, "GetParametersByPath"); n < 2 {
		t.Errorf("%d GetParametersByPath calls, want pagination", n)
	}

	dup := runPiggyEnv(t, w.env("PIGGY_AWS_SSM_PARAMETER_PATH=/team-a/web", "D=piggy:dup"), "--", "child")
	if dup.exitCode == 0 || !strings.Contains(dup.lastError(t), `parameters "/team-a/web/a/dup" and "/team-a/web/b/dup" both provide key "dup"`) {
		t.Errorf("duplicate: exit %d; stderr:\n%s", dup.exitCode, dup.stderr)
	}
}

func TestProcessStandaloneRetriesOnThrottling(t *testing.T) {
	t.Parallel()
	w := newAWSWorld(t)
	if _, err := w.srv.PutSecretString("team-a/web", `{"db":"s3cr3t"}`); err != nil {
		t.Fatal(err)
	}
	if err := w.srv.InjectFault(awslocal.Fault{Service: awslocal.ServiceSecretsManager, Operation: "GetSecretValue", Kind: awslocal.FaultThrottle, Times: 2}); err != nil {
		t.Fatal(err)
	}
	// PIGGY_NUMBER_OF_RETRY counts attempts, as in the original: the third
	// and last one succeeds.
	res := runPiggyEnv(t, w.env("PIGGY_AWS_SECRET_NAME=team-a/web", "PIGGY_NUMBER_OF_RETRY=3", "DB=piggy:db"), "--", "child")
	if res.exitCode != 0 || res.child == nil {
		t.Fatalf("exit %d; stderr:\n%s", res.exitCode, res.stderr)
	}
	// Our policy retried (the SDK's retries are off) and the credentials
	// were fetched once for all attempts.
	if diff := cmp.Diff(map[string]int{"GetSecretValue": 3, "AssumeRoleWithWebIdentity": 1}, map[string]int{
		"GetSecretValue":            w.srv.Calls(awslocal.ServiceSecretsManager, "GetSecretValue"),
		"AssumeRoleWithWebIdentity": w.srv.Calls(awslocal.ServiceSTS, "AssumeRoleWithWebIdentity"),
	}); diff != "" {
		t.Errorf("calls mismatch (-want +got):\n%s", diff)
	}
}

func TestProcessStandaloneFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		setup     func(t *testing.T, w *awsWorld) []string // returns extra env
		wantExit  int
		wantMsg   []string
		wantCalls int // GetSecretValue calls; -1 to skip
	}{
		{
			name: "missing key names the variable",
			setup: func(t *testing.T, w *awsWorld) []string {
				w.srv.PutSecretString("team-a/web", `{"db":"s3cr3t"}`)
				return []string{"PIGGY_AWS_SECRET_NAME=team-a/web", "API_TOKEN=piggy:api"}
			},
			wantExit: 1, wantMsg: []string{`no value for API_TOKEN (key "api")`, `secret "team-a/web"`}, wantCalls: 1,
		},
		{
			name: "reserved key is never given",
			setup: func(t *testing.T, w *awsWorld) []string {
				w.srv.PutSecretString("team-a/web", `{"db":"s3cr3t","PIGGY_ALLOWED_SA":"team-a:web"}`)
				return []string{"PIGGY_AWS_SECRET_NAME=team-a/web", "DB=piggy:db", "SA=piggy:PIGGY_ALLOWED_SA"}
			},
			wantExit: 1, wantMsg: []string{`no value for SA (key "PIGGY_ALLOWED_SA")`}, wantCalls: 1,
		},
		{
			name: "not found is final",
			setup: func(t *testing.T, w *awsWorld) []string {
				return []string{"PIGGY_AWS_SECRET_NAME=team-a/absent", "PIGGY_NUMBER_OF_RETRY=3", "DB=piggy:db"}
			},
			wantExit: 1, wantMsg: []string{`secret "team-a/absent"`, "ResourceNotFoundException"}, wantCalls: 1,
		},
		{
			name: "missing version stage names the secret and the version",
			setup: func(t *testing.T, w *awsWorld) []string {
				w.srv.PutSecretString("team-a/db", `{"db":"s3cr3t"}`)
				return []string{"PIGGY_AWS_SECRET_NAME=team-a/db", "PIGGY_AWS_SECRET_VERSION=AWSPENDING", "DB=piggy:db"}
			},
			wantExit: 1, wantMsg: []string{`secret "team-a/db" has no version stage "AWSPENDING"`, "ResourceNotFoundException"}, wantCalls: 1,
		},
		{
			name: "missing version id names the secret and the version",
			setup: func(t *testing.T, w *awsWorld) []string {
				w.srv.PutSecretString("team-a/db", `{"db":"s3cr3t"}`)
				return []string{"PIGGY_AWS_SECRET_NAME=team-a/db", "PIGGY_AWS_SECRET_VERSION=01234567-89ab-cdef-0123-456789abcdef", "DB=piggy:db"}
			},
			wantExit: 1, wantMsg: []string{`secret "team-a/db" has no version id "01234567-89ab-cdef-0123-456789abcdef"`}, wantCalls: 1,
		},
		{
			name: "SSM path without parameters names the path",
			setup: func(t *testing.T, w *awsWorld) []string {
				return []string{"PIGGY_AWS_SSM_PARAMETER_PATH=/team-a/empty", "DB=piggy:db"}
			},
			wantExit: 1, wantMsg: []string{`SSM path "/team-a/empty" has no parameters`}, wantCalls: -1,
		},
		{
			name: "access denied is final",
			setup: func(t *testing.T, w *awsWorld) []string {
				w.srv.PutSecretString("team-b/db", `{"db":"s3cr3t"}`)
				return []string{"PIGGY_AWS_SECRET_NAME=team-b/db", "PIGGY_NUMBER_OF_RETRY=3", "DB=piggy:db"}
			},
			wantExit: 1, wantMsg: []string{`secret "team-b/db"`, "AccessDenied"}, wantCalls: 1,
		},
		{
			name: "binary secret",
			setup: func(t *testing.T, w *awsWorld) []string {
				w.srv.PutSecretBinary("team-a/bin", []byte{0, 1, 2})
				return []string{"PIGGY_AWS_SECRET_NAME=team-a/bin", "DB=piggy:db"}
			},
			wantExit: 1, wantMsg: []string{"holds a binary value"}, wantCalls: 1,
		},
		{
			name: "nested value",
			setup: func(t *testing.T, w *awsWorld) []string {
				w.srv.PutSecretString("team-a/web", `{"db":{"password":"s3cr3t"}}`)
				return []string{"PIGGY_AWS_SECRET_NAME=team-a/web", "DB=piggy:db"}
			},
			wantExit: 1, wantMsg: []string{`key "db" holds a JSON object`}, wantCalls: 1,
		},
		{
			name: "role does not trust the service account",
			setup: func(t *testing.T, w *awsWorld) []string {
				return []string{"PIGGY_AWS_SECRET_NAME=team-a/web", "DB=piggy:db", "AWS_ROLE_ARN=arn:aws:iam::111122223333:role/other"}
			},
			wantExit: 1, wantMsg: []string{"AccessDenied", "AssumeRoleWithWebIdentity"}, wantCalls: 0,
		},
		{
			name: "no region",
			setup: func(t *testing.T, w *awsWorld) []string {
				return []string{"PIGGY_AWS_SECRET_NAME=team-a/web", "DB=piggy:db", "AWS_REGION="}
			},
			wantExit: 1, wantMsg: []string{"PIGGY_AWS_REGION"}, wantCalls: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := newAWSWorld(t)
			res := runPiggyEnv(t, w.env(tt.setup(t, w)...), "--", "child")
			if res.exitCode != tt.wantExit || res.child != nil {
				t.Errorf("exit %d (want %d), child ran %v; stderr:\n%s", res.exitCode, tt.wantExit, res.child != nil, res.stderr)
			}
			msg := res.lastError(t)
			for _, want := range tt.wantMsg {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not contain %q", msg, want)
				}
			}
			if strings.Contains(res.stderr, "s3cr3t") {
				t.Errorf("stderr holds a secret value:\n%s", res.stderr)
			}
			if n := w.srv.Calls(awslocal.ServiceSecretsManager, "GetSecretValue"); tt.wantCalls >= 0 && n != tt.wantCalls {
				t.Errorf("%d GetSecretValue calls, want %d", n, tt.wantCalls)
			}
		})
	}
}
