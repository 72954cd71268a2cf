package awslocal

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// fuzzServer is a seeded server with one static key.
func fuzzServer(f *testing.F) *Server {
	f.Helper()
	s, err := New(Options{
		StaticCredentials: []StaticCredentials{{AccessKeyID: "AKIDFUZZ", SecretAccessKey: "fuzz-secret", Principal: "arn:aws:iam::123456789012:role/fuzz"}},
		Allow:             map[string][]string{"arn:aws:iam::123456789012:role/fuzz": {"*"}},
	})
	if err != nil {
		f.Fatal(err)
	}
	if _, err := s.PutSecretString("apps/db", "v1"); err != nil {
		f.Fatal(err)
	}
	if _, err := s.PutSecretBinary("apps/bin", []byte{1, 2}); err != nil {
		f.Fatal(err)
	}
	for _, name := range []string{"/app/a", "/app/b/c", "plain"} {
		if _, err := s.PutParameter(name, ParameterSecureString, "v"); err != nil {
			f.Fatal(err)
		}
	}
	return s
}

// checkResponse asserts the response is a well-formed AWS answer.
func checkResponse(t *testing.T, rec *httptest.ResponseRecorder, xmlBody bool) {
	t.Helper()
	switch rec.Code {
	case 200, 400, 403, 413, 500:
	default:
		t.Fatalf("status %d", rec.Code)
	}
	if rec.Code != 200 && !xmlBody && rec.Header().Get("X-Amzn-ErrorType") == "" {
		t.Fatalf("error without X-Amzn-ErrorType: %s", rec.Body)
	}
	if xmlBody {
		var v struct{ XMLName xml.Name }
		if err := xml.Unmarshal(rec.Body.Bytes(), &v); err != nil {
			t.Fatalf("response is not XML: %v: %s", err, rec.Body)
		}
		return
	}
	if !json.Valid(rec.Body.Bytes()) {
		t.Fatalf("response is not JSON: %s", rec.Body)
	}
}

// FuzzJSONRequest feeds signed Secrets Manager and SSM requests with
// arbitrary targets and bodies through ServeHTTP.
func FuzzJSONRequest(f *testing.F) {
	s := fuzzServer(f)
	seeds := []struct{ target, body string }{
		{"secretsmanager.GetSecretValue", `{"SecretId":"apps/db"}`},
		{"secretsmanager.GetSecretValue", `{"SecretId":"apps/db","VersionStage":"AWSPREVIOUS"}`},
		{"secretsmanager.GetSecretValue", `{"SecretId":"arn:aws:secretsmanager:us-east-1:123456789012:secret:apps/db","VersionId":"00000000000000000000000000000000"}`},
		{"secretsmanager.CreateSecret", `{"Name":"n","SecretBinary":"AAEC","ClientRequestToken":"00000000-0000-0000-0000-000000000000"}`},
		{"secretsmanager.PutSecretValue", `{"SecretId":"apps/db","SecretString":"x","VersionStages":["A","AWSCURRENT","A"]}`},
		{"secretsmanager.PutSecretValue", `{"SecretId":"apps/db","SecretString":"x","SecretBinary":"eA=="}`},
		{"secretsmanager.DeleteSecret", `{}`},
		{"AmazonSSM.GetParametersByPath", `{"Path":"/","Recursive":true,"MaxResults":1}`},
		{"AmazonSSM.GetParametersByPath", `{"Path":"/app","NextToken":"L2FwcC8AZmFsc2UAL2FwcC9h"}`},
		{"AmazonSSM.GetParametersByPath", `{"Path":"/app","MaxResults":-9223372036854775808}`},
		{"AmazonSSM.GetParameter", `{"Name":"arn:aws:ssm:us-east-1:123456789012:parameter/plain","WithDecryption":true}`},
		{"AmazonSSM.PutParameter", `{"Name":"/x/y","Value":"v","Type":"StringList","Overwrite":true,"Tier":"Intelligent-Tiering"}`},
		{"AmazonSSM.PutParameter", `{"Name":"/x/y","Value":null}`},
		{"AmazonSSM.GetParameter", `[1,2,3]`},
		{"secretsmanager.GetSecretValue", `{"SecretId":1}`},
		{"secretsmanager.", ``},
		{"AmazonSSM.GetParameter", "\xff\xfe"},
	}
	for _, sd := range seeds {
		f.Add(sd.target, []byte(sd.body))
	}
	signer := v4.NewSigner()
	creds := aws.Credentials{AccessKeyID: "AKIDFUZZ", SecretAccessKey: "fuzz-secret"}
	f.Fuzz(func(t *testing.T, target string, body []byte) {
		req := httptest.NewRequestWithContext(t.Context(), http.MethodPost, "http://awslocal.test/", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/x-amz-json-1.1")
		if strings.ContainsAny(target, "\r\n\x00") {
			return // not a valid header value; net/http would refuse it
		}
		req.Header.Set("X-Amz-Target", target)
		service := ServiceSSM
		if strings.HasPrefix(target, "secretsmanager.") {
			service = ServiceSecretsManager
		}
		sum := sha256.Sum256(body)
		if err := signer.SignHTTP(t.Context(), creds, req, hex.EncodeToString(sum[:]), service, "us-east-1", time.Now()); err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		svc, _ := classify(req)
		checkResponse(t, rec, svc == ServiceSTS)
		if svc != ServiceSTS && rec.Code == 400 && rec.Header().Get("X-Amzn-ErrorType") == codeInvalidSignature {
			t.Fatalf("SDK-signed request refused: %s", rec.Body)
		}
	})
}

// FuzzSTSRequest feeds arbitrary query-protocol bodies to STS.
func FuzzSTSRequest(f *testing.F) {
	s := fuzzServer(f)
	jwt := "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4IiwiZXhwIjo5OTk5OTk5OTk5fQ.c2ln"
	for _, b := range []string{
		"Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fr&RoleSessionName=s1&WebIdentityToken=" + jwt,
		"Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fpath%2Fr&RoleSessionName=s1&WebIdentityToken=a.b.c&DurationSeconds=900",
		"Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=x&RoleSessionName=&WebIdentityToken=..",
		"Action=AssumeRoleWithWebIdentity&Version=2011-06-15&DurationSeconds=99999999999999999999",
		"Action=GetCallerIdentity&Version=2011-06-15",
		"Action=%zz",
		"",
	} {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body string) {
		req := httptest.NewRequestWithContext(t.Context(), http.MethodPost, "http://awslocal.test/", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		checkResponse(t, rec, true)
	})
}

// FuzzAuthorization feeds arbitrary Authorization and X-Amz-Date headers to
// the verifier.
func FuzzAuthorization(f *testing.F) {
	s := fuzzServer(f)
	now := time.Now().UTC().Format(amzDateFormat)
	f.Add("AWS4-HMAC-SHA256 Credential=AKIDFUZZ/"+now[:8]+"/us-east-1/ssm/aws4_request, SignedHeaders=host;x-amz-date, Signature="+strings.Repeat("0", 64), now)
	f.Add("AWS4-HMAC-SHA256 Credential=AKIDFUZZ/"+now[:8]+"/us-east-1/ssm/aws4_request, SignedHeaders=;;, Signature=", now)
	f.Add("AWS4-HMAC-SHA256 Credential=////, SignedHeaders=host, Signature=x", "2024")
	f.Add("AWS4-HMAC-SHA256 ,,,===,", "")
	f.Add("", now)
	f.Fuzz(func(t *testing.T, authz, date string) {
		req := httptest.NewRequestWithContext(t.Context(), http.MethodPost, "http://awslocal.test/", strings.NewReader("{}"))
		req.Header.Set("Authorization", authz)
		req.Header.Set("X-Amz-Date", date)
		_, aerr := s.authenticate(req, ServiceSSM, []byte("{}"))
		if aerr == nil {
			t.Fatalf("accepted a request with a guessed signature: %q", authz)
		}
		switch aerr.code {
		case codeMissingAuth, codeIncompleteSignature, codeInvalidSignature, codeUnrecognizedClient:
		default:
			t.Fatalf("unexpected code %s", aerr.code)
		}
	})
}

// FuzzWebIdentityToken feeds arbitrary tokens and JWKS documents to the
// token checks.
func FuzzWebIdentityToken(f *testing.F) {
	jwks := `{"keys":[{"kty":"RSA","kid":"k","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB"}]}`
	f.Add("eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ.eyJpc3MiOiJpIiwiYXVkIjpbImEiXSwiZXhwIjo5OTk5OTk5OTk5fQ.c2ln", jwks)
	f.Add("eyJhbGciOiJub25lIn0.eyJleHAiOiJzb29uIn0.", jwks)
	f.Add("e30.e30.e30", `{"keys":[{"kty":"RSA","n":"AQ","e":"AAAAAAAA"}]}`)
	f.Add("a.b", `{"keys":[]}`)
	f.Fuzz(func(t *testing.T, token, set string) {
		s, err := New(Options{WebIdentity: &WebIdentity{Issuer: "i", Audience: "a", JWKS: []byte(set)}})
		if err != nil {
			return // an unusable JWKS is refused at construction
		}
		_, aerr := s.checkToken(token, time.Now())
		if aerr == nil {
			t.Fatalf("accepted a token without a valid signature: %q", token)
		}
		if aerr.code != codeInvalidIdentityToken && aerr.code != codeExpiredToken {
			t.Fatalf("unexpected code %s", aerr.code)
		}
	})
}
