package awslocal_test

import (
	"encoding/base64"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ecr"

	"github.com/piggysec/piggy/libs/awslocal"
)

func TestGetAuthorizationToken(t *testing.T) {
	now := time.Now().Truncate(time.Second) // close to the signing clock
	srv, ts := newServer(t, awslocal.Options{AccountID: "210987654321", ECRTokenDuration: time.Hour, Now: func() time.Time { return now }})
	client := ecr.NewFromConfig(staticConfig(t, ts, testKeyID, testSecret, "", testRegion))

	out, err := client.GetAuthorizationToken(t.Context(), &ecr.GetAuthorizationTokenInput{})
	if err != nil {
		t.Fatalf("GetAuthorizationToken: %v", err)
	}
	if len(out.AuthorizationData) != 1 {
		t.Fatalf("got %d authorization data entries, want 1", len(out.AuthorizationData))
	}
	d := out.AuthorizationData[0]
	raw, err := base64.StdEncoding.DecodeString(aws.ToString(d.AuthorizationToken))
	if err != nil {
		t.Fatalf("token is not base64: %v", err)
	}
	if want := "AWS:" + srv.ECRPassword(); string(raw) != want || len(srv.ECRPassword()) < 20 {
		t.Errorf("token decodes to a different user:password than AWS:ECRPassword()")
	}
	if got, want := aws.ToTime(d.ExpiresAt), now.Add(time.Hour); !got.Equal(want) {
		t.Errorf("expiresAt = %v, want %v", got, want)
	}
	if got, want := aws.ToString(d.ProxyEndpoint), "https://210987654321.dkr.ecr."+testRegion+".amazonaws.com"; got != want {
		t.Errorf("proxyEndpoint = %q, want %q", got, want)
	}
	if got := srv.Calls(awslocal.ServiceECR, "GetAuthorizationToken"); got != 1 {
		t.Errorf("Calls = %d, want 1", got)
	}

	// Explicit registry ids get one entry each.
	out, err = client.GetAuthorizationToken(t.Context(), &ecr.GetAuthorizationTokenInput{RegistryIds: []string{"111111111111", "222222222222"}})
	if err != nil {
		t.Fatalf("GetAuthorizationToken with ids: %v", err)
	}
	if len(out.AuthorizationData) != 2 || aws.ToString(out.AuthorizationData[1].ProxyEndpoint) != "https://222222222222.dkr.ecr."+testRegion+".amazonaws.com" {
		t.Errorf("unexpected authorization data for explicit ids: %d entries", len(out.AuthorizationData))
	}

	// A rotated password shows up in the next token.
	old := srv.ECRPassword()
	if srv.RotateECRPassword() == old {
		t.Error("RotateECRPassword kept the password")
	}
	out, err = client.GetAuthorizationToken(t.Context(), &ecr.GetAuthorizationTokenInput{})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ = base64.StdEncoding.DecodeString(aws.ToString(out.AuthorizationData[0].AuthorizationToken))
	if string(raw) != "AWS:"+srv.ECRPassword() {
		t.Error("token after rotation does not carry the new password")
	}
}

func TestGetAuthorizationTokenErrors(t *testing.T) {
	tests := []struct {
		name      string
		opts      awslocal.Options
		fault     *awslocal.Fault
		keyID     string
		region    string
		in        ecr.GetAuthorizationTokenInput
		want      apiErr
		wantCalls int
	}{
		{name: "server error, retried by the SDK", fault: &awslocal.Fault{Service: awslocal.ServiceECR, Kind: awslocal.FaultServerError},
			want: apiErr{Code: "ServerException", Status: 500}, wantCalls: 3},
		{name: "throttled once, then served", fault: &awslocal.Fault{Service: awslocal.ServiceECR, Operation: "GetAuthorizationToken", Kind: awslocal.FaultThrottle, Times: 1},
			wantCalls: 2},
		{name: "access denied", fault: &awslocal.Fault{Service: awslocal.ServiceECR, Kind: awslocal.FaultError, Code: "AccessDeniedException", Message: "denied"},
			want: apiErr{Code: "AccessDeniedException", Status: 400}, wantCalls: 1},
		{name: "not allowed by policy", opts: awslocal.Options{Allow: map[string][]string{"arn:aws:iam::123456789012:user/awslocal": {"some-secret"}}},
			want: apiErr{Code: "AccessDeniedException", Status: 400}, wantCalls: 1},
		{name: "unknown key", keyID: "AKIAUNKNOWN000000000", want: apiErr{Code: "UnrecognizedClientException", Status: 400}, wantCalls: 1},
		{name: "wrong region", region: "us-west-2", want: apiErr{Code: "InvalidSignatureException", Status: 400}, wantCalls: 1},
		{name: "bad registry id", in: ecr.GetAuthorizationTokenInput{RegistryIds: []string{"nope"}}, want: apiErr{Code: "InvalidParameterException", Status: 400}, wantCalls: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, ts := newServer(t, tt.opts)
			if tt.fault != nil {
				if err := srv.InjectFault(*tt.fault); err != nil {
					t.Fatal(err)
				}
			}
			keyID, region := testKeyID, testRegion
			if tt.keyID != "" {
				keyID = tt.keyID
			}
			if tt.region != "" {
				region = tt.region
			}
			client := ecr.NewFromConfig(staticConfig(t, ts, keyID, testSecret, "", region))
			_, err := client.GetAuthorizationToken(t.Context(), &tt.in)
			if got := describe(err); got != tt.want {
				t.Errorf("error = %+v (%v), want %+v", got, err, tt.want)
			}
			if got := srv.Calls(awslocal.ServiceECR, "GetAuthorizationToken"); got != tt.wantCalls {
				t.Errorf("Calls = %d, want %d", got, tt.wantCalls)
			}
		})
	}
}
