package broker

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// writeCA writes the test server's certificate as a PEM CA file.
func writeCA(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ca.crt")
	data := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(path, data, 0o444); err != nil {
		t.Fatal(err)
	}
	return path
}

// writeOtherCA writes a freshly generated self-signed CA that signed nothing.
func writeOtherCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "other CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "other.crt")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o444); err != nil {
		t.Fatal(err)
	}
	return path
}

func writeToken(t *testing.T, token string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(token), 0o400); err != nil {
		t.Fatal(err)
	}
	return path
}

func newClient(t *testing.T, srv *httptest.Server, tokenFile string, tlsOpts TLSOptions) *Client {
	t.Helper()
	hc, _, err := NewHTTPClient(&net.Dialer{Timeout: time.Second}, tlsOpts, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(srv.URL + "/")
	c, err := New(Options{Address: u, TokenFile: tokenFile, HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestGetSecrets(t *testing.T) {
	type seen struct {
		Method, Path, Auth, ContentType string
		Body                            Request
	}
	var got seen
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = seen{Method: r.Method, Path: r.URL.Path, Auth: r.Header.Get("Authorization"), ContentType: r.Header.Get("Content-Type")}
		if err := json.NewDecoder(r.Body).Decode(&got.Body); err != nil {
			t.Errorf("decode body: %v", err)
		}
		io.WriteString(w, `{"values":{"K1":"v1"},"missingKeys":["K2"],"sourceName":"ns/sa"}`)
	}))
	defer srv.Close()

	tokenFile := writeToken(t, "tok-1\n")
	c := newClient(t, srv, tokenFile, TLSOptions{CAFile: writeCA(t, srv)})
	resp, err := c.GetSecrets(t.Context(), Request{ContainerUID: "uid", Signature: "sig", Keys: []string{"K1", "K2"}})
	if err != nil {
		t.Fatal(err)
	}
	want := seen{Method: "POST", Path: "/v1/secrets", Auth: "Bearer tok-1", ContentType: "application/json",
		Body: Request{ContainerUID: "uid", Signature: "sig", Keys: []string{"K1", "K2"}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("request mismatch (-want +got):\n%s", diff)
	}
	wantResp := Response{Values: map[string]string{"K1": "v1"}, MissingKeys: []string{"K2"}, SourceName: "ns/sa"}
	if diff := cmp.Diff(wantResp, resp); diff != "" {
		t.Errorf("response mismatch (-want +got):\n%s", diff)
	}

	// The token is read again for every request (projected tokens rotate).
	if err := os.WriteFile(tokenFile, []byte("tok-2"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetSecrets(t.Context(), Request{Keys: []string{"K1"}}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff("Bearer tok-2", got.Auth); diff != "" {
		t.Errorf("rotated token not used (-want +got):\n%s", diff)
	}
}

func TestGetSecretsErrors(t *testing.T) {
	tests := []struct {
		name          string
		status        int
		body          string
		wantRetryable bool
		wantMsg       string
		wantCode      int
	}{
		{name: "permission denied", status: 403, body: `{"code":7,"message":"pod may not read secret","details":[]}`, wantMsg: "HTTP 403 Forbidden (PermissionDenied): pod may not read secret", wantCode: 7},
		{name: "unauthenticated", status: 401, body: `{"code":16,"message":"token rejected"}`, wantMsg: "(Unauthenticated): token rejected", wantCode: 16},
		{name: "bad request", status: 400, body: `{"code":3,"message":"bad signature"}`, wantMsg: "InvalidArgument", wantCode: 3},
		{name: "not found", status: 404, body: `{"code":5,"message":"no secret"}`, wantMsg: "NotFound", wantCode: 5},
		{name: "throttled", status: 429, body: `{"code":8,"message":"slow down"}`, wantRetryable: true, wantMsg: "ResourceExhausted", wantCode: 8},
		{name: "internal", status: 500, body: `{"code":13,"message":"boom"}`, wantRetryable: true, wantMsg: "Internal", wantCode: 13},
		{name: "proxy error page", status: 502, body: `<html>bad gateway</html>`, wantRetryable: true, wantMsg: "HTTP 502 Bad Gateway", wantCode: -1},
		{name: "unavailable", status: 503, body: `{"code":14,"message":"starting"}`, wantRetryable: true, wantMsg: "Unavailable", wantCode: 14},
		{name: "gateway timeout", status: 504, body: `{"code":4,"message":"aws slow"}`, wantRetryable: true, wantMsg: "DeadlineExceeded", wantCode: 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}))
			defer srv.Close()
			c := newClient(t, srv, writeToken(t, "t"), TLSOptions{CAFile: writeCA(t, srv)})
			_, err := c.GetSecrets(t.Context(), Request{Keys: []string{"K"}})
			se, ok := errors.AsType[*StatusError](err)
			if !ok {
				t.Fatalf("error %v is not a StatusError", err)
			}
			if se.Code != tt.wantCode || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error = %q (code %d), want code %d and %q", err, se.Code, tt.wantCode, tt.wantMsg)
			}
			if got := Retryable(err); got != tt.wantRetryable {
				t.Errorf("Retryable = %v, want %v", got, tt.wantRetryable)
			}
		})
	}
}

func TestGetSecretsMalformedResponseHidesBody(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"values":{"K":"top-secret-value"},"missingKeys":"oops"}`)
	}))
	defer srv.Close()
	c := newClient(t, srv, writeToken(t, "t"), TLSOptions{SkipVerify: true})
	_, err := c.GetSecrets(t.Context(), Request{Keys: []string{"K"}})
	if err == nil || strings.Contains(err.Error(), "top-secret-value") || Retryable(err) {
		t.Errorf("error = %v; want a final error that does not quote the body", err)
	}
}

func TestTransportErrors(t *testing.T) {
	t.Run("unknown CA is final", func(t *testing.T) {
		srv := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
		defer srv.Close()
		// A CA file that exists but does not sign the server's certificate.
		c := newClient(t, srv, writeToken(t, "t"), TLSOptions{CAFile: writeOtherCA(t)})
		_, err := c.GetSecrets(t.Context(), Request{})
		if _, ok := errors.AsType[*TransportError](err); !ok || Retryable(err) {
			t.Errorf("error = %v, retryable = %v; want a final transport error", err, Retryable(err))
		}
	})
	t.Run("missing CA file uses system roots", func(t *testing.T) {
		srv := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
		defer srv.Close()
		_, used, err := NewHTTPClient(&net.Dialer{}, TLSOptions{CAFile: filepath.Join(t.TempDir(), "absent")}, time.Second)
		if err != nil || used {
			t.Fatalf("NewHTTPClient = used %v, %v; want system roots", used, err)
		}
	})
	t.Run("CA file without certificates", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "ca.crt")
		os.WriteFile(path, []byte("not pem"), 0o600)
		if _, _, err := NewHTTPClient(&net.Dialer{}, TLSOptions{CAFile: path}, time.Second); err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("error = %v, want one naming %s", err, path)
		}
	})
	t.Run("connection refused is retryable", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		hc, _, _ := NewHTTPClient(&net.Dialer{}, TLSOptions{SkipVerify: true}, time.Second)
		c, _ := New(Options{Address: &url.URL{Scheme: "https", Host: addr}, TokenFile: writeToken(t, "t"), HTTPClient: hc})
		_, err = c.GetSecrets(t.Context(), Request{})
		if !Retryable(err) || !strings.Contains(err.Error(), "connection refused") {
			t.Errorf("error = %v, retryable = %v; want a retryable connection error", err, Retryable(err))
		}
	})
	t.Run("token file problems are final", func(t *testing.T) {
		srv := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
		defer srv.Close()
		for _, path := range []string{filepath.Join(t.TempDir(), "absent"), writeToken(t, " \n")} {
			c := newClient(t, srv, path, TLSOptions{SkipVerify: true})
			_, err := c.GetSecrets(t.Context(), Request{})
			if err == nil || Retryable(err) || !strings.Contains(err.Error(), "PIGGY_TOKEN_FILE") {
				t.Errorf("token %s: error = %v; want a final error naming PIGGY_TOKEN_FILE", path, err)
			}
		}
	})
}

func TestRetryHints(t *testing.T) {
	retryInfo := `{"code":8,"message":"the secret broker is overloaded: too many requests from this address; retry in 2s","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"2s"}]}`
	tests := []struct {
		name       string
		status     int
		header     string
		body       string
		wantHint   time.Duration
		wantHinted bool
		wantMsg    string
	}{
		{name: "429 with Retry-After and RetryInfo: the header wins", status: 429, header: "3", body: retryInfo, wantHint: 3 * time.Second, wantHinted: true,
			wantMsg: "HTTP 429 Too Many Requests (ResourceExhausted): the secret broker is overloaded: too many requests from this address; retry in 2s (it asked to retry after 3s)"},
		{name: "429 with RetryInfo only", status: 429, body: retryInfo, wantHint: 2 * time.Second, wantHinted: true},
		{name: "429 from a proxy, Retry-After only", status: 429, header: "1", body: `<html>slow down</html>`, wantHint: time.Second, wantHinted: true,
			wantMsg: "HTTP 429 Too Many Requests: the broker is overloaded (it asked to retry after 1s)"},
		{name: "429 without a hint", status: 429, body: `{"code":8,"message":"slow down"}`, wantMsg: "slow down: the broker is overloaded"},
		{name: "503 with Retry-After", status: 503, header: "4", body: `{"code":14,"message":"starting"}`, wantHint: 4 * time.Second, wantHinted: true},
		{name: "Retry-After on a final answer is ignored", status: 403, header: "1", body: `{"code":7,"message":"denied"}`},
		{name: "Retry-After as an HTTP date in the past", status: 429, header: "Wed, 21 Oct 2015 07:28:00 GMT", body: `{"code":8}`, wantHint: 0, wantHinted: true},
		{name: "a negative Retry-After is no hint", status: 429, header: "-5", body: `{"code":8}`},
		{name: "a huge Retry-After is bounded", status: 429, header: "99999999999", body: `{"code":8}`, wantHint: time.Hour, wantHinted: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tt.header != "" {
					w.Header().Set("Retry-After", tt.header)
				}
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}))
			defer srv.Close()
			c := newClient(t, srv, writeToken(t, "t"), TLSOptions{CAFile: writeCA(t, srv)})
			_, err := c.GetSecrets(t.Context(), Request{Keys: []string{"K"}})
			se, ok := errors.AsType[*StatusError](err)
			if !ok {
				t.Fatalf("error %v is not a StatusError", err)
			}
			hint, hinted := se.RetryAfter()
			if hinted != tt.wantHinted || hint != tt.wantHint {
				t.Errorf("RetryAfter = %s, %v; want %s, %v", hint, hinted, tt.wantHint, tt.wantHinted)
			}
			if tt.wantMsg != "" && !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error = %q, want %q in it", err, tt.wantMsg)
			}
		})
	}
}
