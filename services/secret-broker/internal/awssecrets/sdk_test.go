package awssecrets

import (
	"encoding/pem"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/piggysec/piggy/libs/awslocal"
	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
)

// sdkFetcher points the real SDK configuration (NewAWS) at an awslocal
// server over TLS with static keys, through the same environment variables
// a deployment uses. Tests using it cannot run in parallel (t.Setenv).
func sdkFetcher(t *testing.T, opts awslocal.Options) (*Fetcher, *awslocal.Server) {
	t.Helper()
	opts.Region = "eu-west-3"
	opts.StaticCredentials = []awslocal.StaticCredentials{{AccessKeyID: "AKIABROKERTEST000001", SecretAccessKey: "brokerTestSecretKey000000000000000000000", Principal: "arn:aws:iam::123456789012:user/broker"}}
	srv, err := awslocal.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewTLSServer(srv)
	t.Cleanup(ts.Close)
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, e := range os.Environ() {
		if k, _, _ := strings.Cut(e, "="); strings.HasPrefix(k, "AWS_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
	for k, v := range map[string]string{
		"AWS_REGION": "eu-west-3", "AWS_ENDPOINT_URL": ts.URL, "AWS_CA_BUNDLE": ca,
		"AWS_ACCESS_KEY_ID": "AKIABROKERTEST000001", "AWS_SECRET_ACCESS_KEY": "brokerTestSecretKey000000000000000000000",
		"AWS_CONFIG_FILE": filepath.Join(dir, "config"), "AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "credentials"),
		"AWS_EC2_METADATA_DISABLED": "true",
	} {
		t.Setenv(k, v)
	}
	cfg, clients, err := NewAWS(t.Context(), AWSOptions{MaxAttempts: 4, MaxBackoff: 20 * time.Millisecond, AttemptTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Region != "eu-west-3" {
		t.Errorf("region = %q", cfg.Region)
	}
	f, err := NewFetcher(clients, FetcherOptions{Regions: []string{"eu-west-3"}})
	if err != nil {
		t.Fatal(err)
	}
	return f, srv
}

func TestRealSDK(t *testing.T) {
	f, srv := sdkFetcher(t, awslocal.Options{Allow: map[string][]string{"arn:aws:iam::123456789012:user/broker": {"team-a/*", "/team-a/*"}}})
	if _, err := srv.PutSecretString("team-a/web", `{"db":"pw"}`); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.PutSecretString("team-b/web", `{"db":"other"}`); err != nil {
		t.Fatal(err)
	}
	for i := range 25 {
		if _, err := srv.PutParameter(fmt.Sprintf("/team-a/app/k%02d", i), awslocal.ParameterSecureString, fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	web := Source{Region: "eu-west-3", SecretName: "team-a/web"}

	t.Run("read", func(t *testing.T) {
		s, err := f.Fetch(t.Context(), web)
		if err != nil || s.Values["db"].Reveal() != "pw" {
			t.Fatalf("Fetch = %+v, %v", s, err)
		}
	})
	t.Run("throttled twice then served", func(t *testing.T) {
		srv.ResetCalls()
		if err := srv.InjectFault(awslocal.Fault{Service: awslocal.ServiceSecretsManager, Kind: awslocal.FaultThrottle, Times: 2}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Fetch(t.Context(), web); err != nil {
			t.Fatal(err)
		}
		if n := srv.Calls(awslocal.ServiceSecretsManager, "GetSecretValue"); n != 3 {
			t.Errorf("calls = %d, want 3", n)
		}
	})
	t.Run("5xx until the retries run out", func(t *testing.T) {
		srv.ResetCalls()
		if err := srv.InjectFault(awslocal.Fault{Service: awslocal.ServiceSecretsManager, Kind: awslocal.FaultServerError}); err != nil {
			t.Fatal(err)
		}
		defer srv.ClearFaults()
		_, err := f.Fetch(t.Context(), web)
		if fe := fault.As(err); fe.Kind != fault.Unavailable || fe.Reason != "aws_unavailable" {
			t.Errorf("err = %v, want Unavailable/aws_unavailable", err)
		}
		if n := srv.Calls(awslocal.ServiceSecretsManager, "GetSecretValue"); n != 4 {
			t.Errorf("calls = %d, want 4 attempts", n)
		}
	})
	t.Run("connection dropped", func(t *testing.T) {
		if err := srv.InjectFault(awslocal.Fault{Service: awslocal.ServiceSecretsManager, Kind: awslocal.FaultCloseConnection}); err != nil {
			t.Fatal(err)
		}
		defer srv.ClearFaults()
		if _, err := f.Fetch(t.Context(), web); fault.KindOf(err) != fault.Unavailable {
			t.Errorf("err = %v, want Unavailable", err)
		}
	})
	t.Run("credentials rejected once: new ones, same page again", func(t *testing.T) {
		srv.ResetCalls()
		if err := srv.InjectFault(awslocal.Fault{Service: awslocal.ServiceSSM, Kind: awslocal.FaultError, Code: "UnrecognizedClientException", Times: 1}); err != nil {
			t.Fatal(err)
		}
		defer srv.ClearFaults()
		s, err := f.Fetch(t.Context(), Source{Region: "eu-west-3", SSMParameterPath: "/team-a/app"})
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Values) != 25 {
			t.Errorf("values = %d, want 25", len(s.Values))
		}
		if n := srv.Calls(awslocal.ServiceSSM, "GetParametersByPath"); n != 4 {
			t.Errorf("calls = %d, want 4 (the first page twice)", n)
		}
	})
	t.Run("not found", func(t *testing.T) {
		_, err := f.Fetch(t.Context(), Source{Region: "eu-west-3", SecretName: "team-a/nope"})
		if fault.KindOf(err) != fault.NotFound || !strings.Contains(err.Error(), `"team-a/nope"`) {
			t.Errorf("err = %v, want NotFound naming the secret", err)
		}
	})
	t.Run("stage not found", func(t *testing.T) {
		_, err := f.Fetch(t.Context(), Source{Region: "eu-west-3", SecretName: "team-a/web", Version: "AWSPREVIOUS"})
		if fault.KindOf(err) != fault.NotFound || !strings.Contains(err.Error(), "AWSPREVIOUS") {
			t.Errorf("err = %v, want NotFound naming the version", err)
		}
	})
	t.Run("access denied", func(t *testing.T) {
		_, err := f.Fetch(t.Context(), Source{Region: "eu-west-3", SecretName: "team-b/web"})
		if fault.KindOf(err) != fault.PermissionDenied {
			t.Errorf("err = %v, want PermissionDenied", err)
		}
	})
	t.Run("ssm paginated", func(t *testing.T) {
		srv.ResetCalls()
		s, err := f.Fetch(t.Context(), Source{Region: "eu-west-3", SSMParameterPath: "/team-a/app"})
		if err != nil || len(s.Values) != 25 || s.Values["k07"].Reveal() != "7" {
			t.Fatalf("Fetch = %d values, %v", len(s.Values), err)
		}
		if n := srv.Calls(awslocal.ServiceSSM, "GetParametersByPath"); n != 3 {
			t.Errorf("pages = %d, want 3", n)
		}
	})
}
