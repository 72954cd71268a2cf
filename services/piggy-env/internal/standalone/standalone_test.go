package standalone

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/google/go-cmp/cmp"

	"github.com/piggysec/piggy/services/piggy-env/internal/config"
)

type fakeSM struct {
	out   *secretsmanager.GetSecretValueOutput
	err   error
	input *secretsmanager.GetSecretValueInput
}

func (f *fakeSM) GetSecretValue(_ context.Context, in *secretsmanager.GetSecretValueInput, _ ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error) {
	f.input = in
	return f.out, f.err
}

// fakeSSM serves parameters in pages of pageSize and records the inputs.
type fakeSSM struct {
	params   []ssmtypes.Parameter
	pageSize int
	inputs   []ssm.GetParametersByPathInput
}

func (f *fakeSSM) GetParametersByPath(_ context.Context, in *ssm.GetParametersByPathInput, _ ...func(*ssm.Options)) (*ssm.GetParametersByPathOutput, error) {
	f.inputs = append(f.inputs, *in)
	start := 0
	if in.NextToken != nil {
		fmt.Sscan(*in.NextToken, &start)
	}
	end := min(start+f.pageSize, len(f.params))
	out := &ssm.GetParametersByPathOutput{Parameters: f.params[start:end]}
	if end < len(f.params) {
		out.NextToken = aws.String(fmt.Sprint(end))
	}
	return out, nil
}

func TestFetchSecret(t *testing.T) {
	const object = `{"user":"admin","pass":"p@ss","port":5432,"ratio":1.50,"on":true,"off":false,"nested":{"a":1},"list":[1],"nil":null,"PIGGY_ALLOWED_SA":"ns:sa"}`
	tests := []struct {
		name      string
		version   string
		secret    *secretsmanager.GetSecretValueOutput
		keys      []string
		want      map[string]string
		wantStage string
		wantID    string
		wantErr   string
	}{
		{
			name: "strings numbers booleans", secret: &secretsmanager.GetSecretValueOutput{SecretString: aws.String(object)},
			keys:      []string{"user", "pass", "port", "ratio", "on", "off", "absent"},
			want:      map[string]string{"user": "admin", "pass": "p@ss", "port": "5432", "ratio": "1.50", "on": "true", "off": "false"},
			wantStage: "AWSCURRENT",
		},
		{
			name: "unwanted odd values are ignored", secret: &secretsmanager.GetSecretValueOutput{SecretString: aws.String(object)},
			keys: []string{"user"}, want: map[string]string{"user": "admin"}, wantStage: "AWSCURRENT",
		},
		{
			name: "reserved keys never returned", secret: &secretsmanager.GetSecretValueOutput{SecretString: aws.String(object)},
			keys: []string{"PIGGY_ALLOWED_SA", "user"}, want: map[string]string{"user": "admin"}, wantStage: "AWSCURRENT",
		},
		{
			name: "stage", version: "AWSPREVIOUS", secret: &secretsmanager.GetSecretValueOutput{SecretString: aws.String(`{}`)},
			want: map[string]string{}, wantStage: "AWSPREVIOUS",
		},
		{
			name: "custom stage", version: "blue", secret: &secretsmanager.GetSecretValueOutput{SecretString: aws.String(`{}`)},
			want: map[string]string{}, wantStage: "blue",
		},
		{
			name: "not hex, so a stage", version: "EXAMPLE1-90ab-cdef-fedc-ba987EXAMPLE", secret: &secretsmanager.GetSecretValueOutput{SecretString: aws.String(`{}`)},
			want: map[string]string{}, wantStage: "EXAMPLE1-90ab-cdef-fedc-ba987EXAMPLE",
		},
		{
			name: "uuid version id", version: "a1b2c3d4-5678-90ab-cdef-0123456789ab", secret: &secretsmanager.GetSecretValueOutput{SecretString: aws.String(`{}`)},
			want: map[string]string{}, wantID: "a1b2c3d4-5678-90ab-cdef-0123456789ab",
		},
		{name: "object value", secret: &secretsmanager.GetSecretValueOutput{SecretString: aws.String(object)}, keys: []string{"nested"}, wantErr: `key "nested" holds a JSON object`},
		{name: "array value", secret: &secretsmanager.GetSecretValueOutput{SecretString: aws.String(object)}, keys: []string{"list"}, wantErr: `key "list" holds a JSON array`},
		{name: "null value", secret: &secretsmanager.GetSecretValueOutput{SecretString: aws.String(object)}, keys: []string{"nil"}, wantErr: `key "nil" is null`},
		{name: "not an object", secret: &secretsmanager.GetSecretValueOutput{SecretString: aws.String(`"just-a-password"`)}, keys: []string{"k"}, wantErr: "SecretString is JSON string, not an object"},
		{name: "not JSON", secret: &secretsmanager.GetSecretValueOutput{SecretString: aws.String(`hunter2`)}, keys: []string{"k"}, wantErr: "SecretString is not a JSON object"},
		{name: "binary", secret: &secretsmanager.GetSecretValueOutput{SecretBinary: []byte{1, 2}}, keys: []string{"k"}, wantErr: "holds a binary value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sm := &fakeSM{out: tt.secret}
			f := NewFetcher(Source{SecretName: "ns/sa", SecretVersion: tt.version}, sm, nil)
			got, err := f.Fetch(t.Context(), tt.keys)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Fetch error = %v, want %q", err, tt.wantErr)
				}
				for _, secret := range []string{"admin", "p@ss", "hunter2", "just-a-password"} {
					if strings.Contains(err.Error(), secret) {
						t.Errorf("error %q quotes a secret value", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("values mismatch (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantStage, aws.ToString(sm.input.VersionStage)); tt.wantID == "" && diff != "" {
				t.Errorf("VersionStage mismatch (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantID, aws.ToString(sm.input.VersionId)); diff != "" {
				t.Errorf("VersionId mismatch (-want +got):\n%s", diff)
			}
			if tt.wantID != "" && sm.input.VersionStage != nil {
				t.Errorf("VersionStage %q sent with a version id", *sm.input.VersionStage)
			}
		})
	}
}

func TestIsVersionID(t *testing.T) {
	for v, want := range map[string]bool{
		"a1b2c3d4-5678-90ab-cdef-0123456789ab":  true,
		"A1B2C3D4-5678-90AB-CDEF-0123456789AB":  true,
		"AWSCURRENT":                            false,
		"":                                      false,
		"a1b2c3d4-5678-90ab-cdef-0123456789az":  false,
		"a1b2c3d4x5678-90ab-cdef-0123456789ab":  false,
		"a1b2c3d4-5678-90ab-cdef-0123456789abc": false,
	} {
		if got := IsVersionID(v); got != want {
			t.Errorf("IsVersionID(%q) = %v, want %v", v, got, want)
		}
	}
}

func param(name, value string) ssmtypes.Parameter {
	return ssmtypes.Parameter{Name: aws.String(name), Value: aws.String(value)}
}

func TestFetchSSM(t *testing.T) {
	params := []ssmtypes.Parameter{
		param("/app/prod/db/user", "admin"), param("/app/prod/db/pass", "p@ss"),
		param("/app/prod/api", "k"), param("/app/prod/x/PIGGY_ALLOWED_SA", "ns:sa"),
		param("/app/prod/a/dup", "1"), param("/app/prod/b/dup", "2"),
	}
	tests := []struct {
		name    string
		keys    []string
		want    map[string]string
		wantErr string
	}{
		{name: "last path element, across pages", keys: []string{"user", "pass", "api", "absent"}, want: map[string]string{"user": "admin", "pass": "p@ss", "api": "k"}},
		{name: "reserved key never returned", keys: []string{"PIGGY_ALLOWED_SA"}, want: map[string]string{}},
		{name: "duplicate last element", keys: []string{"dup"}, wantErr: `parameters "/app/prod/a/dup" and "/app/prod/b/dup" both provide key "dup"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := &fakeSSM{params: params, pageSize: 2}
			f := NewFetcher(Source{SSMParameterPath: "/app/prod", SecretName: "ignored"}, nil, fake)
			got, err := f.Fetch(t.Context(), tt.keys)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Fetch error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("values mismatch (-want +got):\n%s", diff)
			}
			if len(fake.inputs) != 3 {
				t.Errorf("%d pages requested, want 3", len(fake.inputs))
			}
			for _, in := range fake.inputs {
				if aws.ToString(in.Path) != "/app/prod" || !aws.ToBool(in.Recursive) || !aws.ToBool(in.WithDecryption) {
					t.Errorf("input path %q recursive %v decryption %v, want /app/prod, true, true",
						aws.ToString(in.Path), aws.ToBool(in.Recursive), aws.ToBool(in.WithDecryption))
				}
			}
		})
	}
}

func TestRetryable(t *testing.T) {
	httpErr := func(status int) error {
		return &smithy.OperationError{ServiceID: "Secrets Manager", OperationName: "GetSecretValue", Err: &awshttp.ResponseError{
			ResponseError: &smithyhttp.ResponseError{Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status}}, Err: errors.New("x")},
		}}
	}
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{name: "throttling", err: &smithy.GenericAPIError{Code: "ThrottlingException"}, want: true},
		{name: "503", err: httpErr(503), want: true},
		{name: "500", err: httpErr(500), want: true},
		{name: "connection refused", err: &net.OpError{Op: "dial", Err: errors.New("connection refused")}, want: true},
		{name: "invalid identity token", err: fmt.Errorf("get credentials: %w", &smithy.GenericAPIError{Code: "InvalidIdentityToken"}), want: true},
		{name: "not found", err: &smithy.GenericAPIError{Code: "ResourceNotFoundException"}, want: false},
		{name: "access denied", err: &smithy.GenericAPIError{Code: "AccessDeniedException"}, want: false},
		{name: "400", err: httpErr(400), want: false},
		{name: "decode", err: errors.New(`key "x" holds a JSON object`), want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Retryable(tt.err); got != tt.want {
				t.Errorf("Retryable(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestNewAWSConfig(t *testing.T) {
	d := &net.Dialer{}
	t.Run("no credentials", func(t *testing.T) {
		_, err := NewAWSConfig(config.AWS{Region: "eu-west-1"}, d, time.Second)
		if err == nil || !strings.Contains(err.Error(), "AWS_ROLE_ARN") {
			t.Errorf("error = %v, want one naming AWS_ROLE_ARN", err)
		}
	})
	t.Run("static keys", func(t *testing.T) {
		cfg, err := NewAWSConfig(config.AWS{Region: "eu-west-1", AccessKeyID: "AKID", SecretAccessKey: "s"}, d, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		creds, err := cfg.Credentials.Retrieve(t.Context())
		if err != nil || creds.AccessKeyID != "AKID" {
			t.Errorf("credentials = %v, %v", creds.AccessKeyID, err)
		}
		if cfg.Retryer().MaxAttempts() != 1 {
			t.Errorf("SDK retries are on: %d attempts", cfg.Retryer().MaxAttempts())
		}
	})
	t.Run("bad CA bundle", func(t *testing.T) {
		_, err := NewAWSConfig(config.AWS{Region: "r", AccessKeyID: "a", SecretAccessKey: "s", CABundle: "/nonexistent/ca.pem"}, d, time.Second)
		if err == nil || !strings.Contains(err.Error(), "AWS_CA_BUNDLE") {
			t.Errorf("error = %v, want one naming AWS_CA_BUNDLE", err)
		}
	})
}
