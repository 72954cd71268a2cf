package awslocal_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"
	"github.com/google/go-cmp/cmp"

	"github.com/piggysec/piggy/libs/awslocal"
)

// seedParameters stores 23 parameters: /app/p00../app/p19 directly under
// /app, two nested ones and one outside.
func seedParameters(t *testing.T, srv *awslocal.Server) {
	t.Helper()
	for i := range 20 {
		if _, err := srv.PutParameter(fmt.Sprintf("/app/p%02d", i), awslocal.ParameterString, fmt.Sprint("value-", i)); err != nil {
			t.Fatal(err)
		}
	}
	for name, typ := range map[string]awslocal.ParameterType{
		"/app/db/password": awslocal.ParameterSecureString,
		"/app/db/hosts":    awslocal.ParameterStringList,
		"/other/x":         awslocal.ParameterString,
	} {
		if _, err := srv.PutParameter(name, typ, "secret-"+name); err != nil {
			t.Fatal(err)
		}
	}
}

func TestGetParametersByPathPagination(t *testing.T) {
	srv, ts := newServer(t, awslocal.Options{})
	seedParameters(t, srv)
	client := ssm.NewFromConfig(staticConfig(t, ts, testKeyID, testSecret, "", testRegion))

	var direct []string
	for i := range 20 {
		direct = append(direct, fmt.Sprintf("/app/p%02d", i))
	}
	tests := []struct {
		name      string
		in        ssm.GetParametersByPathInput
		wantNames []string
		wantPages int
	}{
		{"direct children, default page size", ssm.GetParametersByPathInput{Path: aws.String("/app")}, direct, 2},
		{"trailing slash", ssm.GetParametersByPathInput{Path: aws.String("/app/"), MaxResults: aws.Int32(7)}, direct, 3},
		{"recursive", ssm.GetParametersByPathInput{Path: aws.String("/app"), Recursive: aws.Bool(true), MaxResults: aws.Int32(10)},
			append([]string{"/app/db/hosts", "/app/db/password"}, direct...), 3},
		{"nested", ssm.GetParametersByPathInput{Path: aws.String("/app/db")}, []string{"/app/db/hosts", "/app/db/password"}, 1},
		{"root recursive", ssm.GetParametersByPathInput{Path: aws.String("/"), Recursive: aws.Bool(true)},
			append(append([]string{"/app/db/hosts", "/app/db/password"}, direct...), "/other/x"), 3},
		{"root direct children", ssm.GetParametersByPathInput{Path: aws.String("/")}, nil, 1},
		{"no match", ssm.GetParametersByPathInput{Path: aws.String("/nothing")}, nil, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv.ResetCalls()
			var names []string
			pages := ssm.NewGetParametersByPathPaginator(client, &tt.in)
			for pages.HasMorePages() {
				page, err := pages.NextPage(t.Context())
				if err != nil {
					t.Fatalf("NextPage: %v", err)
				}
				if len(page.Parameters) > 10 {
					t.Errorf("page has %d parameters, AWS returns at most 10", len(page.Parameters))
				}
				for _, p := range page.Parameters {
					names = append(names, aws.ToString(p.Name))
				}
			}
			if diff := cmp.Diff(tt.wantNames, names); diff != "" {
				t.Errorf("names (-want +got):\n%s", diff)
			}
			if got := srv.Calls(awslocal.ServiceSSM, "GetParametersByPath"); got != tt.wantPages {
				t.Errorf("GetParametersByPath calls = %d, want %d", got, tt.wantPages)
			}
		})
	}
}

func TestSSMValues(t *testing.T) {
	srv, ts := newServer(t, awslocal.Options{})
	seedParameters(t, srv)
	client := ssm.NewFromConfig(staticConfig(t, ts, testKeyID, testSecret, "", testRegion))
	ctx := t.Context()

	type param struct {
		Name, Type, Value string
		Version           int64
	}
	byPath := func(decrypt bool) map[string]param {
		out, err := client.GetParametersByPath(ctx, &ssm.GetParametersByPathInput{Path: aws.String("/app/db"), WithDecryption: aws.Bool(decrypt)})
		if err != nil {
			t.Fatalf("GetParametersByPath: %v", err)
		}
		m := map[string]param{}
		for _, p := range out.Parameters {
			m[aws.ToString(p.Name)] = param{aws.ToString(p.Name), string(p.Type), aws.ToString(p.Value), p.Version}
		}
		return m
	}
	decrypted := byPath(true)
	want := map[string]param{
		"/app/db/hosts":    {"/app/db/hosts", "StringList", "secret-/app/db/hosts", 1},
		"/app/db/password": {"/app/db/password", "SecureString", "secret-/app/db/password", 1},
	}
	if diff := cmp.Diff(want, decrypted); diff != "" {
		t.Errorf("WithDecryption (-want +got):\n%s", diff)
	}
	if enc := byPath(false)["/app/db/password"].Value; enc == "" || strings.Contains(enc, "secret-") {
		t.Errorf("SecureString without decryption = %q, want an opaque ciphertext", enc)
	}

	// PutParameter: create, refuse to overwrite, overwrite keeping the type.
	if _, err := client.PutParameter(ctx, &ssm.PutParameterInput{Name: aws.String("/app/new"), Value: aws.String("a"), Type: ssmtypes.ParameterTypeSecureString}); err != nil {
		t.Fatalf("PutParameter: %v", err)
	}
	_, err := client.PutParameter(ctx, &ssm.PutParameterInput{Name: aws.String("/app/new"), Value: aws.String("b")})
	var exists *ssmtypes.ParameterAlreadyExists
	if !errors.As(err, &exists) {
		t.Errorf("PutParameter without Overwrite = %v, want ParameterAlreadyExists", err)
	}
	put, err := client.PutParameter(ctx, &ssm.PutParameterInput{Name: aws.String("/app/new"), Value: aws.String("b"), Overwrite: aws.Bool(true)})
	if err != nil || put.Version != 2 || put.Tier != ssmtypes.ParameterTierStandard {
		t.Fatalf("PutParameter overwrite = %+v, %v; want version 2, Standard tier", put, err)
	}
	got, err := client.GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String("/app/new"), WithDecryption: aws.Bool(true)})
	if err != nil {
		t.Fatalf("GetParameter: %v", err)
	}
	if diff := cmp.Diff(param{"/app/new", "SecureString", "b", 2}, param{aws.ToString(got.Parameter.Name), string(got.Parameter.Type), aws.ToString(got.Parameter.Value), got.Parameter.Version}); diff != "" {
		t.Errorf("GetParameter (-want +got):\n%s", diff)
	}
	byARN, err := client.GetParameter(ctx, &ssm.GetParameterInput{Name: got.Parameter.ARN})
	if err != nil || aws.ToString(byARN.Parameter.Name) != "/app/new" {
		t.Errorf("GetParameter by ARN %s = %v, %v", aws.ToString(got.Parameter.ARN), byARN, err)
	}
}

func TestSSMErrors(t *testing.T) {
	const reader = "arn:aws:iam::123456789012:role/reader"
	srv, ts := newServer(t, awslocal.Options{
		StaticCredentials: []awslocal.StaticCredentials{{AccessKeyID: "AKIAREADER0000000001", SecretAccessKey: "readerSecret", Principal: reader}},
		Allow:             map[string][]string{reader: {"/app", "/app/*"}},
	})
	seedParameters(t, srv)
	client := ssm.NewFromConfig(staticConfig(t, ts, testKeyID, testSecret, "", testRegion))
	readerClient := ssm.NewFromConfig(staticConfig(t, ts, "AKIAREADER0000000001", "readerSecret", "", testRegion))

	byPath := func(c *ssm.Client, in ssm.GetParametersByPathInput) func(context.Context) error {
		return func(ctx context.Context) error { _, err := c.GetParametersByPath(ctx, &in); return err }
	}
	put := func(in ssm.PutParameterInput) func(context.Context) error {
		return func(ctx context.Context) error { _, err := client.PutParameter(ctx, &in); return err }
	}
	is := func(target any) func(error) bool { return func(err error) bool { return errors.As(err, target) } }
	tests := []struct {
		name  string
		fault *awslocal.Fault
		call  func(context.Context) error
		want  apiErr
		typed func(error) bool
	}{
		{name: "parameter not found", call: func(ctx context.Context) error {
			_, err := client.GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String("/app/missing")})
			return err
		}, want: apiErr{"ParameterNotFound", 400}, typed: is(new(*ssmtypes.ParameterNotFound))},
		{name: "already exists", call: put(ssm.PutParameterInput{Name: aws.String("/app/p00"), Value: aws.String("x"), Type: ssmtypes.ParameterTypeString}),
			want: apiErr{"ParameterAlreadyExists", 400}, typed: is(new(*ssmtypes.ParameterAlreadyExists))},
		{name: "type required on create", call: put(ssm.PutParameterInput{Name: aws.String("/app/typeless"), Value: aws.String("x")}),
			want: apiErr{"ValidationException", 400}, typed: is(new(*ssmtypes.ValidationException))},
		{name: "reserved name", call: put(ssm.PutParameterInput{Name: aws.String("/aws/x"), Value: aws.String("x"), Type: ssmtypes.ParameterTypeString}),
			want: apiErr{"ValidationException", 400}, typed: is(new(*ssmtypes.ValidationException))},
		{name: "relative hierarchical name", call: put(ssm.PutParameterInput{Name: aws.String("a/b"), Value: aws.String("x"), Type: ssmtypes.ParameterTypeString}),
			want: apiErr{"ValidationException", 400}, typed: is(new(*ssmtypes.ValidationException))},
		{name: "too large for standard tier", call: put(ssm.PutParameterInput{Name: aws.String("/app/big"), Value: aws.String(strings.Repeat("x", 5000)), Type: ssmtypes.ParameterTypeString, Tier: ssmtypes.ParameterTierStandard}),
			want: apiErr{"ValidationException", 400}, typed: is(new(*ssmtypes.ValidationException))},
		{name: "max results above 10", call: byPath(client, ssm.GetParametersByPathInput{Path: aws.String("/app"), MaxResults: aws.Int32(11)}),
			want: apiErr{"ValidationException", 400}, typed: is(new(*ssmtypes.ValidationException))},
		{name: "path without slash", call: byPath(client, ssm.GetParametersByPathInput{Path: aws.String("app")}),
			want: apiErr{"ValidationException", 400}, typed: is(new(*ssmtypes.ValidationException))},
		{name: "foreign next token", call: byPath(client, ssm.GetParametersByPathInput{Path: aws.String("/app"), NextToken: aws.String("bm90LWEtdG9rZW4")}),
			want: apiErr{"InvalidNextToken", 400}, typed: is(new(*ssmtypes.InvalidNextToken))},
		{name: "allowed path", call: byPath(readerClient, ssm.GetParametersByPathInput{Path: aws.String("/app")})},
		{name: "access denied", call: byPath(readerClient, ssm.GetParametersByPathInput{Path: aws.String("/other")}),
			want: apiErr{"AccessDeniedException", 400}},
		{name: "throttled after retries", fault: &awslocal.Fault{Service: "ssm", Kind: awslocal.FaultThrottle, Times: 3},
			call: byPath(client, ssm.GetParametersByPathInput{Path: aws.String("/app")}),
			want: apiErr{"ThrottlingException", 400}, typed: is(new(*ssmtypes.ThrottlingException))},
		{name: "internal error after retries", fault: &awslocal.Fault{Service: "ssm", Operation: "GetParametersByPath", Kind: awslocal.FaultServerError, Times: 3},
			call: byPath(client, ssm.GetParametersByPathInput{Path: aws.String("/app")}),
			want: apiErr{"InternalServerError", 500}, typed: is(new(*ssmtypes.InternalServerError))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.fault != nil {
				if err := srv.InjectFault(*tt.fault); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(srv.ClearFaults)
			}
			err := tt.call(t.Context())
			if diff := cmp.Diff(tt.want, describe(err)); diff != "" {
				t.Fatalf("error (-want +got):\n%s\nerr: %v", diff, err)
			}
			if tt.typed != nil && !tt.typed(err) {
				t.Errorf("error %T is not the SDK's typed error", err)
			}
		})
	}
}
