package awslocal_test

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/google/go-cmp/cmp"

	"github.com/piggysec/piggy/libs/awslocal"
)

// skewedSigner is the SDK's SigV4 signer with a different service name, a
// shifted clock, or a header changed after signing.
type skewedSigner struct {
	service     string
	shift       time.Duration
	tamperAfter bool
}

func (s skewedSigner) SignHTTP(ctx context.Context, creds aws.Credentials, r *http.Request, payloadHash, service, region string, at time.Time, opts ...func(*v4.SignerOptions)) error {
	if s.service != "" {
		service = s.service
	}
	err := v4.NewSigner().SignHTTP(ctx, creds, r, payloadHash, service, region, at.Add(s.shift), opts...)
	if s.tamperAfter {
		r.Header.Set("Content-Type", "application/x-amz-json-1.1; tampered")
	}
	return err
}

// TestRequestAuthentication checks SigV4 verification through the SDK: good
// signatures pass, everything else is refused with AWS's error codes.
func TestRequestAuthentication(t *testing.T) {
	p := newIDP(t)
	var offset atomic.Int64 // server clock shift, to expire session keys without sleeping
	srv, ts := newServer(t, awslocal.Options{
		CredentialDuration: time.Minute,
		Now:                func() time.Time { return time.Now().Add(time.Duration(offset.Load())) },
	})
	if _, err := srv.PutSecretString("s", "v"); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.PutParameter("/p", awslocal.ParameterString, "v"); err != nil {
		t.Fatal(err)
	}

	// Session credentials from the server's STS (no verifier configured).
	stsClient := sts.NewFromConfig(staticConfig(t, ts, testKeyID, testSecret, "", testRegion))
	assume := func() aws.Credentials {
		t.Helper()
		out, err := stsClient.AssumeRoleWithWebIdentity(t.Context(), &sts.AssumeRoleWithWebIdentityInput{
			RoleArn: aws.String(testRole), RoleSessionName: aws.String("auth-test"),
			WebIdentityToken: aws.String(p.token(t, p.serviceAccountClaims("system:serviceaccount:apps:web"))),
		})
		if err != nil {
			t.Fatalf("AssumeRoleWithWebIdentity: %v", err)
		}
		c := out.Credentials
		return aws.Credentials{AccessKeyID: *c.AccessKeyId, SecretAccessKey: *c.SecretAccessKey, SessionToken: *c.SessionToken}
	}
	session := assume()
	expiring := assume()

	type client struct{ key, secret, token, region string }
	static := client{testKeyID, testSecret, "", testRegion}
	tests := []struct {
		name   string
		client client
		signer *skewedSigner
		anon   bool
		expire bool
		want   apiErr
	}{
		{name: "static keys", client: static},
		{name: "session keys", client: client{session.AccessKeyID, session.SecretAccessKey, session.SessionToken, testRegion}},
		{name: "wrong secret key", client: client{testKeyID, "not-the-secret", "", testRegion}, want: apiErr{"InvalidSignatureException", 400}},
		{name: "unknown access key", client: client{"AKIAUNKNOWN000000000", testSecret, "", testRegion}, want: apiErr{"UnrecognizedClientException", 400}},
		{name: "wrong region scope", client: client{testKeyID, testSecret, "", "us-west-2"}, want: apiErr{"InvalidSignatureException", 400}},
		{name: "wrong service scope", client: static, signer: &skewedSigner{service: "ssm"}, want: apiErr{"InvalidSignatureException", 400}},
		{name: "signed 20 minutes ago", client: static, signer: &skewedSigner{shift: -20 * time.Minute}, want: apiErr{"InvalidSignatureException", 400}},
		{name: "header changed after signing", client: static, signer: &skewedSigner{tamperAfter: true}, want: apiErr{"InvalidSignatureException", 400}},
		{name: "no signature", client: static, anon: true, want: apiErr{"MissingAuthenticationTokenException", 400}},
		{name: "session token on static key", client: client{testKeyID, testSecret, "made-up-token", testRegion}, want: apiErr{"UnrecognizedClientException", 400}},
		{name: "wrong session token", client: client{session.AccessKeyID, session.SecretAccessKey, "made-up-token", testRegion}, want: apiErr{"UnrecognizedClientException", 400}},
		{name: "missing session token", client: client{session.AccessKeyID, session.SecretAccessKey, "", testRegion}, want: apiErr{"UnrecognizedClientException", 400}},
		{name: "expired session keys", client: client{expiring.AccessKeyID, expiring.SecretAccessKey, expiring.SessionToken, testRegion}, expire: true, want: apiErr{"ExpiredTokenException", 400}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.expire {
				offset.Store(int64(2 * time.Minute)) // past expiry, within the 15-minute skew
				t.Cleanup(func() { offset.Store(0) })
			}
			var extra []func(*config.LoadOptions) error
			if tt.anon {
				extra = append(extra, config.WithCredentialsProvider(aws.AnonymousCredentials{}))
			}
			cfg := staticConfig(t, ts, tt.client.key, tt.client.secret, tt.client.token, tt.client.region, extra...)
			smOpts := func(o *secretsmanager.Options) {
				if tt.signer != nil {
					o.HTTPSignerV4 = *tt.signer
				}
			}
			ssmOpts := func(o *ssm.Options) {
				if tt.signer != nil {
					o.HTTPSignerV4 = *tt.signer
				}
			}
			_, err := secretsmanager.NewFromConfig(cfg, smOpts).GetSecretValue(t.Context(), &secretsmanager.GetSecretValueInput{SecretId: aws.String("s")})
			if diff := cmp.Diff(tt.want, describe(err)); diff != "" {
				t.Errorf("Secrets Manager error (-want +got):\n%s\nerr: %v", diff, err)
			}
			want := tt.want
			if tt.signer != nil && tt.signer.service == "ssm" {
				want = apiErr{} // a request for SSM signed for SSM is fine
			}
			_, err = ssm.NewFromConfig(cfg, ssmOpts).GetParameter(t.Context(), &ssm.GetParameterInput{Name: aws.String("/p")})
			if diff := cmp.Diff(want, describe(err)); diff != "" {
				t.Errorf("SSM error (-want +got):\n%s\nerr: %v", diff, err)
			}
		})
	}
}

// TestMalformedAuthorization sends hand-built Authorization headers.
func TestMalformedAuthorization(t *testing.T) {
	_, ts := newServer(t, awslocal.Options{})
	base := map[string]string{"X-Amz-Target": "secretsmanager.GetSecretValue", "Content-Type": "application/x-amz-json-1.1", "X-Amz-Date": "20240101T000000Z"}
	tests := []struct {
		name, auth string
		want       string
	}{
		{"other algorithm", "AWS4-HMAC-SHA512 Credential=a/20240101/eu-west-3/secretsmanager/aws4_request, SignedHeaders=host, Signature=00", "IncompleteSignatureException"},
		{"no fields", "AWS4-HMAC-SHA256", "IncompleteSignatureException"},
		{"short credential", "AWS4-HMAC-SHA256 Credential=a/b, SignedHeaders=host, Signature=" + zeros(64), "IncompleteSignatureException"},
		{"host not signed", "AWS4-HMAC-SHA256 Credential=a/20240101/eu-west-3/secretsmanager/aws4_request, SignedHeaders=x-amz-date, Signature=" + zeros(64), "IncompleteSignatureException"},
		{"short signature", "AWS4-HMAC-SHA256 Credential=a/20240101/eu-west-3/secretsmanager/aws4_request, SignedHeaders=host, Signature=abc", "IncompleteSignatureException"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := map[string]string{"Authorization": tt.auth}
			for k, v := range base {
				h[k] = v
			}
			resp := rawPost(t, ts.URL, h, `{"SecretId":"s"}`)
			body := readAll(t, resp)
			if resp.StatusCode != 400 || resp.Header.Get("X-Amzn-ErrorType") != tt.want {
				t.Errorf("got %d %q %s; want 400 %s", resp.StatusCode, resp.Header.Get("X-Amzn-ErrorType"), body, tt.want)
			}
		})
	}
}

func zeros(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = '0'
	}
	return string(b)
}
