package awssecrets

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"
	"github.com/aws/smithy-go"
	"github.com/google/go-cmp/cmp"

	"github.com/piggysec/piggy/libs/logging"
	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
)

// fakeSM answers GetSecretValue and records the inputs.
type fakeSM struct {
	mu  sync.Mutex
	in  []*secretsmanager.GetSecretValueInput
	out *secretsmanager.GetSecretValueOutput
	err error
}

func (f *fakeSM) GetSecretValue(_ context.Context, in *secretsmanager.GetSecretValueInput, _ ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.in = append(f.in, in)
	return f.out, f.err
}

// fakeSSM serves parameters in pages of two.
type fakeSSM struct {
	params []ssmtypes.Parameter
	pages  int
	in     []*ssm.GetParametersByPathInput
	err    error
}

func (f *fakeSSM) GetParametersByPath(_ context.Context, in *ssm.GetParametersByPathInput, _ ...func(*ssm.Options)) (*ssm.GetParametersByPathOutput, error) {
	f.in = append(f.in, in)
	if f.err != nil {
		return nil, f.err
	}
	start := 0
	if in.NextToken != nil {
		fmt.Sscan(*in.NextToken, &start)
	}
	end := min(start+2, len(f.params))
	out := &ssm.GetParametersByPathOutput{Parameters: f.params[start:end]}
	if end < len(f.params) {
		out.NextToken = aws.String(fmt.Sprint(end))
	}
	f.pages++
	return out, nil
}

func fetcher(t *testing.T, sm SecretsManagerAPI, p SSMAPI, regions ...string) (*Fetcher, *[]string) {
	t.Helper()
	if len(regions) == 0 {
		regions = []string{"eu-west-3"}
	}
	var created []string
	f, err := NewFetcher(func(region string) Clients {
		created = append(created, region)
		return Clients{SecretsManager: sm, SSM: p}
	}, FetcherOptions{Regions: regions})
	if err != nil {
		t.Fatal(err)
	}
	return f, &created
}

func TestSecretsManagerVersions(t *testing.T) {
	tests := []struct {
		version   string
		wantStage string
		wantID    string
	}{
		{"", "AWSCURRENT", ""},
		{"AWSPREVIOUS", "AWSPREVIOUS", ""},
		{"blue", "blue", ""},
		{"EXAMPLE1-90ab-cdef-fedc-ba987EXAMPLE", "EXAMPLE1-90ab-cdef-fedc-ba987EXAMPLE", ""}, // not hex: a stage
		{"a1b2c3d4-5678-90ab-cdef-0123456789ab", "", "a1b2c3d4-5678-90ab-cdef-0123456789ab"},
	}
	for _, tt := range tests {
		t.Run(tt.version, func(t *testing.T) {
			sm := &fakeSM{out: &secretsmanager.GetSecretValueOutput{SecretString: aws.String(`{"k":"v"}`)}}
			f, _ := fetcher(t, sm, nil)
			if _, err := f.Fetch(t.Context(), Source{Region: "eu-west-3", SecretName: "team-a/web", Version: tt.version}); err != nil {
				t.Fatal(err)
			}
			in := sm.in[0]
			if aws.ToString(in.SecretId) != "team-a/web" || aws.ToString(in.VersionStage) != tt.wantStage || aws.ToString(in.VersionId) != tt.wantID {
				t.Errorf("input = id %q stage %q version %q; want stage %q version %q",
					aws.ToString(in.SecretId), aws.ToString(in.VersionStage), aws.ToString(in.VersionId), tt.wantStage, tt.wantID)
			}
		})
	}
}

func TestSecretContent(t *testing.T) {
	const value = "s3cr3t-value"
	tests := []struct {
		name        string
		out         *secretsmanager.GetSecretValueOutput
		wantValues  map[string]logging.Secret
		wantInvalid map[string]string
		wantReason  string
	}{
		{
			name:        "strings numbers booleans",
			out:         &secretsmanager.GetSecretValueOutput{SecretString: aws.String(`{"db":"` + value + `","port":5432,"ratio":1.50,"neg":-1,"tls":true,"off":false,"nil":null,"obj":{"a":1},"arr":[1]}`)},
			wantValues:  map[string]logging.Secret{"db": value, "port": "5432", "ratio": "1.50", "neg": "-1", "tls": "true", "off": "false"},
			wantInvalid: map[string]string{"nil": "is null; values must be strings, numbers or booleans", "obj": "holds a JSON object; values must be strings, numbers or booleans", "arr": "holds a JSON array; values must be strings, numbers or booleans"},
		},
		{name: "binary", out: &secretsmanager.GetSecretValueOutput{SecretBinary: []byte(value)}, wantReason: "secret_binary"},
		{name: "plain text", out: &secretsmanager.GetSecretValueOutput{SecretString: aws.String(value)}, wantReason: "secret_not_json"},
		{name: "json array", out: &secretsmanager.GetSecretValueOutput{SecretString: aws.String(`["` + value + `"]`)}, wantReason: "secret_not_json"},
		{name: "nothing", out: &secretsmanager.GetSecretValueOutput{}, wantReason: "secret_not_json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, _ := fetcher(t, &fakeSM{out: tt.out}, nil)
			got, err := f.Fetch(t.Context(), Source{Region: "eu-west-3", SecretName: "team-a/web"})
			if tt.wantReason != "" {
				fe := fault.As(err)
				if err == nil || fe.Reason != tt.wantReason || fe.Kind != fault.FailedPrecondition {
					t.Fatalf("err = %v, want FailedPrecondition %s", err, tt.wantReason)
				}
				if strings.Contains(err.Error(), value) || !strings.Contains(err.Error(), "team-a/web") {
					t.Errorf("error %q leaks the value or does not name the secret", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.wantValues, got.Values); diff != "" {
				t.Errorf("values (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantInvalid, got.Invalid); diff != "" {
				t.Errorf("invalid (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSSM(t *testing.T) {
	param := func(name, value string) ssmtypes.Parameter {
		return ssmtypes.Parameter{Name: aws.String(name), Value: aws.String(value)}
	}
	p := &fakeSSM{params: []ssmtypes.Parameter{
		param("/team-a/web/db", "pw"),
		param("/team-a/web/port", "5432"),
		param("/team-a/web/nested/user", "u"),
		param("/team-a/web/a/dup", "1"),
		param("/team-a/web/b/dup", "2"),
		param("/team-a/web/c/dup", "3"),
	}}
	f, _ := fetcher(t, nil, p)
	got, err := f.Fetch(t.Context(), Source{Region: "eu-west-3", SSMParameterPath: "/team-a/web", Version: "ignored"})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]logging.Secret{"db": "pw", "port": "5432", "user": "u"}, got.Values); diff != "" {
		t.Errorf("values (-want +got):\n%s", diff)
	}
	if d := got.Invalid["dup"]; !strings.Contains(d, "/team-a/web/a/dup") || !strings.Contains(d, "/team-a/web/c/dup") && !strings.Contains(d, "/team-a/web/b/dup") {
		t.Errorf("collision = %q, want both parameter names", d)
	}
	if p.pages != 3 {
		t.Errorf("pages = %d, want 3", p.pages)
	}
	in := p.in[0]
	if aws.ToString(in.Path) != "/team-a/web" || !aws.ToBool(in.Recursive) || !aws.ToBool(in.WithDecryption) {
		t.Errorf("input = %+v, want the path, recursive and decrypted", in)
	}

	empty, _ := fetcher(t, nil, &fakeSSM{})
	_, err = empty.Fetch(t.Context(), Source{Region: "eu-west-3", SSMParameterPath: "/team-a/none"})
	if fault.KindOf(err) != fault.NotFound || !strings.Contains(err.Error(), "/team-a/none") {
		t.Errorf("empty path err = %v, want NotFound naming the path", err)
	}
}

func TestClassify(t *testing.T) {
	apiErr := func(code string) error { return &smithy.GenericAPIError{Code: code, Message: "AWS says no"} }
	tests := []struct {
		err        error
		wantKind   fault.Kind
		wantReason string
	}{
		{apiErr("ResourceNotFoundException"), fault.NotFound, "secret_not_found"},
		{apiErr("AccessDeniedException"), fault.PermissionDenied, "aws_access_denied"},
		{apiErr("DecryptionFailure"), fault.PermissionDenied, "aws_access_denied"},
		{apiErr("InvalidParameterException"), fault.InvalidArgument, "aws_invalid_parameter"},
		{apiErr("InvalidRequestException"), fault.FailedPrecondition, "aws_invalid_request"},
		{apiErr("ThrottlingException"), fault.Unavailable, "aws_throttled"},
		{apiErr("ExpiredTokenException"), fault.Unavailable, "aws_credentials"},
		{apiErr("InternalServiceError"), fault.Unavailable, "aws_unavailable"},
		{&smithy.OperationError{ServiceID: "Secrets Manager", OperationName: "GetSecretValue",
			Err: fmt.Errorf("get identity: %w", &smithy.OperationError{ServiceID: "STS", OperationName: "AssumeRoleWithWebIdentity", Err: apiErr("AccessDenied")})},
			fault.Unavailable, "aws_credentials"},
		{context.DeadlineExceeded, fault.Unavailable, "aws_timeout"},
		{errors.New("connection reset by peer"), fault.Unavailable, "aws_unavailable"},
	}
	for _, tt := range tests {
		t.Run(tt.wantReason+" "+tt.err.Error(), func(t *testing.T) {
			f, _ := fetcher(t, &fakeSM{err: tt.err}, nil)
			_, err := f.Fetch(t.Context(), Source{Region: "eu-west-3", SecretName: "team-a/web"})
			fe := fault.As(err)
			if fe.Kind != tt.wantKind || fe.Reason != tt.wantReason {
				t.Errorf("got %v/%s (%v), want %v/%s", fe.Kind, fe.Reason, err, tt.wantKind, tt.wantReason)
			}
			if !strings.Contains(fe.Message, `"team-a/web"`) || strings.Contains(fe.Message, "AWS says no") {
				t.Errorf("message %q must name the secret and keep AWS's text out", fe.Message)
			}
		})
	}
}

// TestClientsPerRegion: clients exist for the operator's regions only,
// created once each; any other region, however many are tried, is refused
// naming the allowed ones and never adds clients (no first-come table).
func TestClientsPerRegion(t *testing.T) {
	sm := &fakeSM{out: &secretsmanager.GetSecretValueOutput{SecretString: aws.String(`{}`)}}
	f, regions := fetcher(t, sm, nil, "us-gov-west-1", "eu-west-3", " us-east-1", "eu-west-3", "")
	for _, r := range []string{"eu-west-3", "us-east-1", "eu-west-3", "us-gov-west-1", "eu-west-3"} {
		if _, err := f.Fetch(t.Context(), Source{Region: r, SecretName: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 100 {
		fake := fmt.Sprintf("zz-fake-%d", i%10)
		err := fault.As(func() error { _, err := f.Fetch(t.Context(), Source{Region: fake, SecretName: "x"}); return err }())
		want := fmt.Sprintf("region %q is not served by this broker; it reads eu-west-3, us-east-1, us-gov-west-1 (the operator's --aws-regions and its own region)", fake)
		if err.Kind != fault.InvalidArgument || err.Message != want {
			t.Fatalf("region %s: %v (%v), want InvalidArgument %q", fake, err, err.Kind, want)
		}
	}
	if diff := cmp.Diff([]string{"eu-west-3", "us-east-1", "us-gov-west-1"}, *regions); diff != "" {
		t.Errorf("clients created (-want +got):\n%s", diff)
	}
	if _, err := f.Fetch(t.Context(), Source{Region: "us-east-1", SecretName: "x"}); err != nil {
		t.Errorf("an allowed region after 100 refused ones: %v", err)
	}
	for _, bad := range []string{"", "EU-WEST-3", "eu-west-3.evil.example", "localhost", "eu-west"} {
		if _, err := f.Fetch(t.Context(), Source{Region: bad, SecretName: "x"}); fault.KindOf(err) != fault.InvalidArgument {
			t.Errorf("region %q: err = %v, want InvalidArgument", bad, err)
		}
	}
	for _, bad := range [][]string{{"eu-west-3", "mars"}, {"eu-west-3.evil.example"}} {
		if _, err := NewFetcher(func(string) Clients { return Clients{} }, FetcherOptions{Regions: bad}); err == nil {
			t.Errorf("NewFetcher with regions %q: no error", bad)
		}
	}
	none, err := NewFetcher(func(string) Clients { t.Error("clients made without a region"); return Clients{} }, FetcherOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := none.Fetch(t.Context(), Source{Region: "eu-west-3", SecretName: "x"}); fault.KindOf(err) != fault.InvalidArgument || !strings.Contains(err.Error(), "no AWS region") {
		t.Errorf("a Fetcher without regions: %v, want InvalidArgument saying it has none", err)
	}
}

func TestSecretSize(t *testing.T) {
	s := &Secret{Values: map[string]logging.Secret{"db": "12345", "k": ""}, Invalid: map[string]string{"n": "is null"}}
	if got := s.Size(); got != 2+5+1+1+7 {
		t.Errorf("Size = %d, want 16", got)
	}
}

// seqSM answers GetSecretValue with errs in turn, then with out.
type seqSM struct {
	errs  []error
	out   *secretsmanager.GetSecretValueOutput
	calls int
}

func (s *seqSM) GetSecretValue(context.Context, *secretsmanager.GetSecretValueInput, ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error) {
	s.calls++
	if len(s.errs) > 0 {
		err := s.errs[0]
		s.errs = s.errs[1:]
		return nil, err
	}
	return s.out, nil
}

func TestRejectedCredentialsAreDropped(t *testing.T) {
	rejected := func(code string) error {
		return &smithy.GenericAPIError{Code: code, Message: "The security token included in the request is invalid."}
	}
	stsFailed := &smithy.OperationError{ServiceID: "Secrets Manager", OperationName: "GetSecretValue",
		Err: fmt.Errorf("get identity: %w", &smithy.OperationError{ServiceID: "STS", OperationName: "AssumeRoleWithWebIdentity", Err: rejected("ExpiredTokenException")})}
	tests := []struct {
		name      string
		errs      []error
		noDrop    bool
		wantCalls int
		wantDrops int
		wantErr   bool
	}{
		{"UnrecognizedClientException once", []error{rejected("UnrecognizedClientException")}, false, 2, 1, false},
		{"InvalidClientTokenId once", []error{rejected("InvalidClientTokenId")}, false, 2, 1, false},
		{"ExpiredToken once", []error{rejected("ExpiredToken")}, false, 2, 1, false},
		{"ExpiredTokenException once", []error{rejected("ExpiredTokenException")}, false, 2, 1, false},
		{"rejected twice: both dropped, no third call", []error{rejected("ExpiredTokenException"), rejected("UnrecognizedClientException")}, false, 2, 2, true},
		{"signature errors are not the credentials' fault", []error{rejected("InvalidSignatureException")}, false, 1, 0, true},
		{"the STS call failing is not a rejection", []error{stsFailed}, false, 1, 0, true},
		{"throttling is not a rejection", []error{rejected("ThrottlingException")}, false, 1, 0, true},
		{"clients without a cache to drop", []error{rejected("ExpiredTokenException")}, true, 1, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sm := &seqSM{errs: tt.errs, out: &secretsmanager.GetSecretValueOutput{SecretString: aws.String(`{"k":"v"}`)}}
			drops := 0
			f, err := NewFetcher(func(string) Clients {
				c := Clients{SecretsManager: sm}
				if !tt.noDrop {
					c.DropCredentials = func() { drops++ }
				}
				return c
			}, FetcherOptions{Regions: []string{"eu-west-3"}})
			if err != nil {
				t.Fatal(err)
			}
			s, err := f.Fetch(t.Context(), Source{Region: "eu-west-3", SecretName: "team-a/web"})
			if (err != nil) != tt.wantErr || sm.calls != tt.wantCalls || drops != tt.wantDrops {
				t.Errorf("Fetch = %v; calls %d, drops %d; want error %v, calls %d, drops %d", err, sm.calls, drops, tt.wantErr, tt.wantCalls, tt.wantDrops)
			}
			if err == nil && s.Values["k"].Reveal() != "v" {
				t.Errorf("values = %v", s.Values)
			}
		})
	}
}
