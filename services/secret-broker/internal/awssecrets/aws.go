package awssecrets

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"

	"github.com/piggysec/piggy/libs/awsbody"
)

// AWSOptions configure NewAWS.
type AWSOptions struct {
	// MaxAttempts is the SDK retryer's total attempts per operation
	// (throttling, 5xx and transport errors are retried).
	MaxAttempts int
	// MaxBackoff caps the retryer's exponential backoff with jitter.
	MaxBackoff time.Duration
	// AttemptTimeout bounds one HTTP attempt; the request's own deadline
	// bounds the whole operation.
	AttemptTimeout time.Duration
}

// NewAWS loads the process's one AWS configuration through the SDK's
// default chain (region from AWS_REGION; IRSA web identity from
// AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE, whose STS client follows
// AWS_ENDPOINT_URL_STS; endpoints from AWS_ENDPOINT_URL*; AWS_CA_BUNDLE),
// with credentials cached by the SDK until they expire and the SDK's
// standard retryer (exponential backoff with jitter). It returns the
// configuration and a ClientsFunc building traced (otelhttp) Secrets
// Manager and SSM clients for a region. It makes no network call.
func NewAWS(ctx context.Context, o AWSOptions) (aws.Config, ClientsFunc, error) {
	base := awshttp.NewBuildableClient().WithTimeout(o.AttemptTimeout)
	cfg, err := config.LoadDefaultConfig(ctx,
		config.WithHTTPClient(base),
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(s *retry.StandardOptions) {
				s.MaxAttempts = o.MaxAttempts
				s.MaxBackoff = o.MaxBackoff
			})
		}),
	)
	if err != nil {
		return aws.Config{}, nil, fmt.Errorf("load AWS configuration: %w", err)
	}
	// The configuration may have replaced the client (AWS_CA_BUNDLE);
	// instrument whatever transport it ended up with.
	var transport http.RoundTripper = http.DefaultTransport
	if bc, ok := cfg.HTTPClient.(*awshttp.BuildableClient); ok {
		transport = bc.GetTransport()
	}
	// Each request carries a body the SDK cannot close under net/http
	// (libs/awsbody). The web-identity STS client, built by the SDK from
	// the plain client, has the SDK's retries for that race instead.
	traced := awsbody.Client(&http.Client{Transport: otelhttp.NewTransport(transport), Timeout: o.AttemptTimeout})
	clients := func(region string) Clients {
		return Clients{
			SecretsManager: secretsmanager.NewFromConfig(cfg, func(so *secretsmanager.Options) {
				so.Region = region
				so.HTTPClient = traced
			}),
			SSM: ssm.NewFromConfig(cfg, func(so *ssm.Options) {
				so.Region = region
				so.HTTPClient = traced
			}),
		}
	}
	return cfg, clients, nil
}
