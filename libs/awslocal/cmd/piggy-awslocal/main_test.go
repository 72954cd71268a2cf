package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
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
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/google/go-cmp/cmp"
)

const seed = `{
  "secrets": [
    {"name": "apps/db", "secretString": "first"},
    {"name": "apps/db", "secretString": "second"},
    {"name": "apps/key", "secretBinary": "AAEC"}
  ],
  "parameters": [
    {"name": "/apps/web/url", "type": "String", "value": "https://x"},
    {"name": "/apps/web/token", "type": "SecureString", "value": "t0ken"}
  ],
  "credentials": [{"accessKeyId": "AKIASEED000000000001", "secretAccessKey": "seed-secret"}],
  "trust": {"arn:aws:iam::111122223333:role/web": ["system:serviceaccount:apps:web"]},
  "allow": {"arn:aws:iam::111122223333:role/web": ["apps/*", "/apps/web", "/apps/web/*"]}
}`

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// selfSigned writes a certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T) (certFile, keyFile string, cert *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "awslocal"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ = x509.ParseCertificate(der)
	return writeFile(t, "cert.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))),
		writeFile(t, "key.pem", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))), cert
}

// token returns a JWKS and a signed service account token.
func token(t *testing.T, issuer, sub string) (jwks, jwt string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	set, _ := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "RSA", "kid": "k1", "n": base64.RawURLEncoding.EncodeToString(key.N.Bytes()), "e": "AQAB",
	}}})
	header, _ := json.Marshal(map[string]string{"alg": "RS256", "kid": "k1"})
	claims, _ := json.Marshal(map[string]any{"iss": issuer, "sub": sub, "aud": "sts.amazonaws.com", "exp": time.Now().Add(time.Hour).Unix()})
	signed := base64.RawURLEncoding.EncodeToString(header) + "." + base64.RawURLEncoding.EncodeToString(claims)
	digest := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	return string(set), signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// isolateEnv hides the machine's AWS configuration from the SDK.
func isolateEnv(t *testing.T) {
	for _, e := range os.Environ() {
		if k, _, _ := strings.Cut(e, "="); strings.HasPrefix(k, "AWS_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
	dir := t.TempDir()
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
}

// TestRun starts the command with a seed file, a JWKS, the admin endpoint
// and (in one case) TLS, drives it with the SDK, then stops it.
func TestRun(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		t.Run(fmt.Sprint("tls=", useTLS), func(t *testing.T) {
			const issuer = "https://oidc.piggy.test"
			jwks, jwt := token(t, issuer, "system:serviceaccount:apps:web")
			addr := freeAddr(t)
			args := []string{"-listen", addr, "-seed", writeFile(t, "seed.json", seed), "-jwks-file", writeFile(t, "jwks.json", jwks),
				"-issuer", issuer, "-audience", "sts.amazonaws.com", "-admin", "-log-level", "error"}
			scheme, httpClient := "http", awshttp.NewBuildableClient()
			if useTLS {
				certFile, keyFile, cert := selfSigned(t)
				args = append(args, "-tls-cert", certFile, "-tls-key", keyFile)
				pool := x509.NewCertPool()
				pool.AddCert(cert)
				scheme = "https"
				httpClient = httpClient.WithTransportOptions(func(tr *http.Transport) { tr.TLSClientConfig = &tls.Config{RootCAs: pool} })
			}
			endpoint := scheme + "://" + addr
			env := map[string]string{"AWSLOCAL_REGION": "eu-central-1"}

			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() { done <- run(ctx, args, func(k string) string { return env[k] }) }()
			waitForListener(t, addr, done)

			isolateEnv(t)
			t.Setenv("AWS_ROLE_ARN", "arn:aws:iam::111122223333:role/web")
			t.Setenv("AWS_WEB_IDENTITY_TOKEN_FILE", writeFile(t, "token", jwt))
			t.Setenv("AWS_REGION", "eu-central-1")
			t.Setenv("AWS_ENDPOINT_URL", endpoint)
			t.Setenv("AWS_ENDPOINT_URL_STS", endpoint)
			irsa, err := config.LoadDefaultConfig(t.Context(), config.WithHTTPClient(httpClient))
			if err != nil {
				t.Fatal(err)
			}
			static := irsa.Copy()
			static.Credentials = aws.NewCredentialsCache(staticProvider{})

			sm := secretsmanager.NewFromConfig(irsa)
			got := map[string]string{}
			for _, stage := range []string{"AWSCURRENT", "AWSPREVIOUS"} {
				out, err := sm.GetSecretValue(t.Context(), &secretsmanager.GetSecretValueInput{SecretId: aws.String("apps/db"), VersionStage: aws.String(stage)})
				if err != nil {
					t.Fatalf("GetSecretValue %s: %v", stage, err)
				}
				got[stage] = aws.ToString(out.SecretString)
			}
			bin, err := secretsmanager.NewFromConfig(static).GetSecretValue(t.Context(), &secretsmanager.GetSecretValueInput{SecretId: aws.String("apps/key")})
			if err != nil {
				t.Fatalf("GetSecretValue binary: %v", err)
			}
			got["binary"] = base64.StdEncoding.EncodeToString(bin.SecretBinary)
			params, err := ssm.NewFromConfig(irsa).GetParametersByPath(t.Context(), &ssm.GetParametersByPathInput{Path: aws.String("/apps/web"), WithDecryption: aws.Bool(true)})
			if err != nil {
				t.Fatalf("GetParametersByPath: %v", err)
			}
			for _, p := range params.Parameters {
				got[aws.ToString(p.Name)] = aws.ToString(p.Value)
			}
			want := map[string]string{"AWSCURRENT": "second", "AWSPREVIOUS": "first", "binary": "AAEC", "/apps/web/url": "https://x", "/apps/web/token": "t0ken"}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("values (-want +got):\n%s", diff)
			}

			// Admin endpoint: throttle twice, the SDK retries, the counter shows it.
			adminClient := &http.Client{Transport: httpClient.GetTransport()}
			admin(t, adminClient, "DELETE", endpoint+"/_awslocal/calls", "", http.StatusNoContent)
			admin(t, adminClient, "POST", endpoint+"/_awslocal/faults", `{"service":"secretsmanager","kind":"throttle","times":2}`, http.StatusNoContent)
			if _, err := sm.GetSecretValue(t.Context(), &secretsmanager.GetSecretValueInput{SecretId: aws.String("apps/db")}); err != nil {
				t.Fatalf("GetSecretValue after throttling: %v", err)
			}
			if body := admin(t, adminClient, "GET", endpoint+"/_awslocal/calls?service=secretsmanager", "", http.StatusOK); body != `{"count":3}` {
				t.Errorf("calls = %s, want 3", body)
			}

			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("run: %v", err)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("run did not stop after cancel")
			}
		})
	}
}

type staticProvider struct{}

func (staticProvider) Retrieve(context.Context) (aws.Credentials, error) {
	return aws.Credentials{AccessKeyID: "AKIASEED000000000001", SecretAccessKey: "seed-secret", Source: "test"}, nil
}

func admin(t *testing.T, c *http.Client, method, url, body string, wantStatus int) string {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantStatus {
		t.Fatalf("%s %s = %d %s, want %d", method, url, resp.StatusCode, b, wantStatus)
	}
	return strings.TrimSpace(string(b))
}

func waitForListener(t *testing.T, addr string, done <-chan error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			t.Fatalf("run exited early: %v", err)
		default:
		}
		if conn, err := net.Dial("tcp", addr); err == nil {
			conn.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("nothing listening on %s", addr)
}

func TestRunAdminDisabled(t *testing.T) {
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-listen", addr, "-log-level", "error"}, func(string) string { return "" })
	}()
	waitForListener(t, addr, done)
	body := admin(t, http.DefaultClient, "GET", "http://"+addr+"/_awslocal/calls", "", http.StatusBadRequest)
	if !strings.Contains(body, "<Code>MissingAction</Code>") {
		t.Errorf("admin path without -admin = %s, want an STS error", body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
}

func TestRunConfigErrors(t *testing.T) {
	badSeed := writeFile(t, "bad.json", `{"secrets":[{"name":"x"}]}`)
	unknownField := writeFile(t, "unknown.json", `{"secret":[]}`)
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string
	}{
		{"cert without key", []string{"-tls-cert", "c.pem"}, nil, "-tls-cert and -tls-key go together"},
		{"issuer without jwks", []string{"-issuer", "https://x"}, nil, "-issuer goes with"},
		{"jwks without issuer", []string{"-jwks-file", "j.json"}, nil, "-issuer goes with"},
		{"both jwks sources", []string{"-jwks-file", "j", "-jwks-url", "http://x", "-issuer", "i"}, nil, "not both"},
		{"bad duration env", nil, map[string]string{"AWSLOCAL_CREDENTIAL_DURATION": "soon"}, "AWSLOCAL_CREDENTIAL_DURATION"},
		{"bad admin env", nil, map[string]string{"AWSLOCAL_ADMIN": "maybe"}, "AWSLOCAL_ADMIN"},
		{"bad log level", []string{"-log-level", "loud"}, nil, "log level"},
		{"missing seed", []string{"-seed", "/nonexistent/seed.json"}, nil, "seed"},
		{"secret without value", []string{"-seed", badSeed, "-listen", "127.0.0.1:0"}, nil, "needs secretString or secretBinary"},
		{"unknown seed field", []string{"-seed", unknownField}, nil, `unknown field "secret"`},
		{"bad account", []string{"-account-id", "12"}, nil, "account id"},
		{"stray argument", []string{"serve"}, nil, "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := run(t.Context(), tt.args, func(k string) string { return tt.env[k] })
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("run = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestLoadJWKS(t *testing.T) {
	const jwks = `{"keys":[]}`
	idp := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/openid/v1/jwks" || r.Header.Get("Authorization") != "Bearer admin-token" {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		io.WriteString(w, jwks)
	}))
	idp.Config.ErrorLog = log.New(io.Discard, "", 0) // the untrusted-CA case fails its handshake
	idp.StartTLS()
	t.Cleanup(idp.Close)
	ca := writeFile(t, "ca.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: idp.Certificate().Raw})))
	tokenFile := writeFile(t, "token", "admin-token\n")
	url := idp.URL + "/openid/v1/jwks"

	tests := []struct {
		name    string
		cfg     settings
		wantErr string
	}{
		{"file", settings{jwksFile: writeFile(t, "jwks.json", jwks)}, ""},
		{"url with CA and token", settings{jwksURL: url, jwksCAFile: ca, jwksTokenFile: tokenFile}, ""},
		{"url without token", settings{jwksURL: url, jwksCAFile: ca}, "403 Forbidden"},
		{"url without CA", settings{jwksURL: url, jwksTokenFile: tokenFile}, "certificate"},
		{"missing file", settings{jwksFile: "/nonexistent"}, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := loadJWKS(t.Context(), tt.cfg)
			if tt.wantErr == "" {
				if err != nil || string(got) != jwks {
					t.Errorf("loadJWKS = %q, %v; want %q", got, err, jwks)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("loadJWKS error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}
