package awslocal

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/google/go-cmp/cmp"
)

// TestVerifierMatchesSDKSigner cross-checks the verifier against requests
// signed by the SDK's own SigV4 signer, including the awkward corners of
// canonicalisation (paths, query encoding, repeated and padded headers), and
// checks that any change after signing is caught.
func TestVerifierMatchesSDKSigner(t *testing.T) {
	s, err := New(Options{Region: "ap-south-2", StaticCredentials: []StaticCredentials{{AccessKeyID: "AKIDCROSSCHECK", SecretAccessKey: "cross/check+secret"}}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if _, aerr := s.authenticate(r, r.Header.Get("X-Test-Service"), body); aerr != nil {
			io.WriteString(w, aerr.code)
			return
		}
		io.WriteString(w, "ok")
	}))
	t.Cleanup(ts.Close)
	creds := aws.Credentials{AccessKeyID: "AKIDCROSSCHECK", SecretAccessKey: "cross/check+secret"}

	type request struct {
		method, target, body string
		header               http.Header
	}
	tests := []struct {
		name   string
		req    request
		tamper func(*http.Request)
	}{
		{name: "json post", req: request{method: "POST", target: "/", body: `{"SecretId":"a"}`,
			header: http.Header{"Content-Type": {"application/x-amz-json-1.1"}, "X-Amz-Target": {"secretsmanager.GetSecretValue"}}}},
		{name: "empty body get", req: request{method: "GET", target: "/"}},
		{name: "path needing escapes", req: request{method: "GET", target: "/a path/ü/~x"}},
		{name: "encoded slash in path", req: request{method: "GET", target: "/a%2Fb/c"}},
		{name: "query encoding and order", req: request{method: "GET", target: "/?b=2&a=x%20y&a=x-y&a=x/y&c=&plus=a%2Bb&star=*"}},
		{name: "repeated and padded headers", req: request{method: "POST", target: "/", body: "x",
			header: http.Header{"X-Amz-Meta-Multi": {"one", "two"}, "X-Custom": {"  lots   of    spaces  "}}}},
		{name: "changed body", req: request{method: "POST", target: "/", body: "original"},
			tamper: func(r *http.Request) { r.Body = io.NopCloser(strings.NewReader("modified")); r.ContentLength = 8 }},
		{name: "changed query", req: request{method: "GET", target: "/?a=1"},
			tamper: func(r *http.Request) { r.URL.RawQuery = "a=2" }},
		{name: "changed signed header", req: request{method: "POST", target: "/", body: "{}", header: http.Header{"X-Amz-Target": {"secretsmanager.GetSecretValue"}}},
			tamper: func(r *http.Request) { r.Header.Set("X-Amz-Target", "secretsmanager.PutSecretValue") }},
		{name: "changed path", req: request{method: "GET", target: "/a"},
			tamper: func(r *http.Request) { r.URL.Path = "/b" }},
		{name: "changed method", req: request{method: "PUT", target: "/"},
			tamper: func(r *http.Request) { r.Method = "DELETE" }},
	}
	for _, tt := range tests {
		for _, service := range []string{ServiceSecretsManager, ServiceSSM} {
			t.Run(tt.name+"/"+service, func(t *testing.T) {
				req, err := http.NewRequestWithContext(t.Context(), tt.req.method, ts.URL+tt.req.target, strings.NewReader(tt.req.body))
				if err != nil {
					t.Fatal(err)
				}
				if tt.req.body == "" {
					req.Body, req.ContentLength = http.NoBody, 0
				}
				for k, vs := range tt.req.header {
					for _, v := range vs {
						req.Header.Add(k, v)
					}
				}
				req.Header.Set("X-Test-Service", service)
				sum := sha256.Sum256([]byte(tt.req.body))
				if err := v4.NewSigner().SignHTTP(t.Context(), creds, req, hex.EncodeToString(sum[:]), service, "ap-south-2", time.Now()); err != nil {
					t.Fatal(err)
				}
				want := "ok"
				if tt.tamper != nil {
					tt.tamper(req)
					want = codeInvalidSignature
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				got, _ := io.ReadAll(resp.Body)
				if diff := cmp.Diff(want, string(got)); diff != "" {
					t.Errorf("verification (-want +got):\n%s", diff)
				}
			})
		}
	}
}
