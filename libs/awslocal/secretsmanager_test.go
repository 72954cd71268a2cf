package awslocal_test

import (
	"context"
	"errors"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	smtypes "github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
	"github.com/google/go-cmp/cmp"

	"github.com/piggysec/piggy/libs/awslocal"
)

// TestSecretsManagerStages drives CreateSecret and PutSecretValue through the
// SDK and checks the staging labels move like AWS's.
func TestSecretsManagerStages(t *testing.T) {
	_, ts := newServer(t, awslocal.Options{})
	client := secretsmanager.NewFromConfig(staticConfig(t, ts, testKeyID, testSecret, "", testRegion))
	ctx := t.Context()

	created, err := client.CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: aws.String("apps/api-key"), SecretString: aws.String("v1")})
	if err != nil {
		t.Fatalf("CreateSecret: %v", err)
	}
	put := func(value string, stages ...string) string {
		t.Helper()
		out, err := client.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{SecretId: aws.String("apps/api-key"), SecretString: aws.String(value), VersionStages: stages})
		if err != nil {
			t.Fatalf("PutSecretValue: %v", err)
		}
		return aws.ToString(out.VersionId)
	}
	v1 := aws.ToString(created.VersionId)
	v2 := put("v2")
	v3 := put("v3")
	staged := put("v4", "STAGING")

	// An idempotent retry (same ClientRequestToken, same value) adds nothing.
	retried, err := client.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{SecretId: created.ARN, SecretString: aws.String("v3"), ClientRequestToken: aws.String(v3)})
	if err != nil || aws.ToString(retried.VersionId) != v3 {
		t.Fatalf("retried PutSecretValue = %v, %v; want version %s", retried, err, v3)
	}

	type version struct {
		Value, ID string
		Stages    []string
	}
	tests := []struct {
		name string
		in   secretsmanager.GetSecretValueInput
		want version
	}{
		{"current", secretsmanager.GetSecretValueInput{}, version{"v3", v3, []string{"AWSCURRENT"}}},
		{"previous", secretsmanager.GetSecretValueInput{VersionStage: aws.String("AWSPREVIOUS")}, version{"v2", v2, []string{"AWSPREVIOUS"}}},
		{"custom stage", secretsmanager.GetSecretValueInput{VersionStage: aws.String("STAGING")}, version{"v4", staged, []string{"STAGING"}}},
		{"deprecated version by id", secretsmanager.GetSecretValueInput{VersionId: aws.String(v1)}, version{"v1", v1, []string{}}},
		{"version id and matching stage", secretsmanager.GetSecretValueInput{VersionId: aws.String(v2), VersionStage: aws.String("AWSPREVIOUS")}, version{"v2", v2, []string{"AWSPREVIOUS"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.in.SecretId = aws.String("apps/api-key")
			out, err := client.GetSecretValue(ctx, &tt.in)
			if err != nil {
				t.Fatalf("GetSecretValue: %v", err)
			}
			got := version{aws.ToString(out.SecretString), aws.ToString(out.VersionId), out.VersionStages}
			if got.Stages == nil {
				got.Stages = []string{}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("GetSecretValue (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("binary", func(t *testing.T) {
		want := []byte{0, 1, 2, 0xff, 'p', 'i', 'g'}
		if _, err := client.CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: aws.String("bin"), SecretBinary: want}); err != nil {
			t.Fatalf("CreateSecret: %v", err)
		}
		out, err := client.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String("bin")})
		if err != nil {
			t.Fatalf("GetSecretValue: %v", err)
		}
		if diff := cmp.Diff(want, out.SecretBinary); diff != "" || out.SecretString != nil {
			t.Errorf("SecretBinary (-want +got):\n%s\nSecretString = %v", diff, out.SecretString)
		}
	})
}

func TestSecretsManagerErrors(t *testing.T) {
	const reader = "arn:aws:iam::123456789012:role/reader"
	srv, ts := newServer(t, awslocal.Options{
		StaticCredentials: []awslocal.StaticCredentials{{AccessKeyID: "AKIAREADER0000000001", SecretAccessKey: "readerSecret", Principal: reader}},
		Allow:             map[string][]string{reader: {"apps/*"}},
	})
	for _, name := range []string{"apps/db", "infra/root"} {
		if _, err := srv.PutSecretString(name, "value"); err != nil {
			t.Fatal(err)
		}
	}
	client := secretsmanager.NewFromConfig(staticConfig(t, ts, testKeyID, testSecret, "", testRegion))
	readerClient := secretsmanager.NewFromConfig(staticConfig(t, ts, "AKIAREADER0000000001", "readerSecret", "", testRegion))
	token := "00000000-0000-4000-8000-000000000001"
	if _, err := client.PutSecretValue(t.Context(), &secretsmanager.PutSecretValueInput{SecretId: aws.String("apps/db"), SecretString: aws.String("x"), ClientRequestToken: &token}); err != nil {
		t.Fatal(err)
	}

	get := func(c *secretsmanager.Client, in secretsmanager.GetSecretValueInput) func(context.Context) error {
		return func(ctx context.Context) error { _, err := c.GetSecretValue(ctx, &in); return err }
	}
	is := func(target any) func(error) bool { return func(err error) bool { return errors.As(err, target) } }
	tests := []struct {
		name  string
		fault *awslocal.Fault
		call  func(context.Context) error
		want  apiErr
		typed func(error) bool
	}{
		{name: "missing secret", call: get(client, secretsmanager.GetSecretValueInput{SecretId: aws.String("nope")}),
			want: apiErr{"ResourceNotFoundException", 400}, typed: is(new(*smtypes.ResourceNotFoundException))},
		{name: "missing stage", call: get(client, secretsmanager.GetSecretValueInput{SecretId: aws.String("infra/root"), VersionStage: aws.String("AWSPREVIOUS")}),
			want: apiErr{"ResourceNotFoundException", 400}, typed: is(new(*smtypes.ResourceNotFoundException))},
		{name: "missing version", call: get(client, secretsmanager.GetSecretValueInput{SecretId: aws.String("apps/db"), VersionId: aws.String("11111111-1111-4111-8111-111111111111")}),
			want: apiErr{"ResourceNotFoundException", 400}, typed: is(new(*smtypes.ResourceNotFoundException))},
		{name: "create existing", call: func(ctx context.Context) error {
			_, err := client.CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: aws.String("apps/db"), SecretString: aws.String("x")})
			return err
		}, want: apiErr{"ResourceExistsException", 400}, typed: is(new(*smtypes.ResourceExistsException))},
		{name: "create bad name", call: func(ctx context.Context) error {
			_, err := client.CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: aws.String("no spaces!")})
			return err
		}, want: apiErr{"InvalidParameterException", 400}, typed: is(new(*smtypes.InvalidParameterException))},
		{name: "string and binary", call: func(ctx context.Context) error {
			_, err := client.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{SecretId: aws.String("apps/db"), SecretString: aws.String("x"), SecretBinary: []byte("y")})
			return err
		}, want: apiErr{"InvalidParameterException", 400}, typed: is(new(*smtypes.InvalidParameterException))},
		{name: "no value", call: func(ctx context.Context) error {
			_, err := client.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{SecretId: aws.String("apps/db")})
			return err
		}, want: apiErr{"InvalidRequestException", 400}, typed: is(new(*smtypes.InvalidRequestException))},
		{name: "reused token with another value", call: func(ctx context.Context) error {
			_, err := client.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{SecretId: aws.String("apps/db"), SecretString: aws.String("other"), ClientRequestToken: &token})
			return err
		}, want: apiErr{"ResourceExistsException", 400}, typed: is(new(*smtypes.ResourceExistsException))},
		{name: "allowed for restricted role", call: get(readerClient, secretsmanager.GetSecretValueInput{SecretId: aws.String("apps/db")})},
		{name: "access denied", call: get(readerClient, secretsmanager.GetSecretValueInput{SecretId: aws.String("infra/root")}),
			want: apiErr{"AccessDeniedException", 400}},
		{name: "access denied before not found", call: get(readerClient, secretsmanager.GetSecretValueInput{SecretId: aws.String("infra/missing")}),
			want: apiErr{"AccessDeniedException", 400}},
		{name: "internal error after retries", fault: &awslocal.Fault{Service: "secretsmanager", Kind: awslocal.FaultServerError, Times: 3},
			call: get(client, secretsmanager.GetSecretValueInput{SecretId: aws.String("apps/db")}),
			want: apiErr{"InternalServiceError", 500}, typed: is(new(*smtypes.InternalServiceError))},
		{name: "throttled after retries", fault: &awslocal.Fault{Service: "secretsmanager", Operation: "GetSecretValue", Kind: awslocal.FaultThrottle, Times: 3},
			call: get(client, secretsmanager.GetSecretValueInput{SecretId: aws.String("apps/db")}),
			want: apiErr{"ThrottlingException", 400}},
		{name: "injected error", fault: &awslocal.Fault{Kind: awslocal.FaultError, Code: "DecryptionFailure", Message: "KMS said no"},
			call: get(client, secretsmanager.GetSecretValueInput{SecretId: aws.String("apps/db")}),
			want: apiErr{"DecryptionFailure", 400}, typed: is(new(*smtypes.DecryptionFailure))},
		{name: "operation not implemented", call: func(ctx context.Context) error {
			_, err := client.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: aws.String("apps/db")})
			return err
		}, want: apiErr{"UnknownOperationException", 400}},
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
