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

// AWSOptions configure NewAWS. Their worst case, RetryBudget, should fit
// in the deadline of a read (ReadTimeout); AttemptTimeout derives the
// per-attempt timeout that makes it fit.
type AWSOptions struct {
	// MaxAttempts is the SDK retryer's total attempts per operation
	// (throttling, 5xx and transport errors are retried).
	MaxAttempts int
	// MaxBackoff caps the retryer's exponential backoff with jitter.
	MaxBackoff time.Duration
	// AttemptTimeout bounds one HTTP attempt; the read's own deadline
	// bounds the whole operation.
	AttemptTimeout time.Duration
}

// ReadTimeout is the deadline of one AWS read within a request of
// requestTimeout: three quarters of it (6s of 8s). The SDK's attempts and
// backoffs, and the STS call when credentials are due, happen inside it;
// the rest of the request is left for the TokenReview and pod check before
// the read and for the answer after it, a stale value when the read fails.
func ReadTimeout(requestTimeout time.Duration) time.Duration {
	return requestTimeout * 3 / 4
}

// RetryBudget is the longest an operation can take with these retry
// settings: every attempt running into its timeout, and the longest backoff
// between attempts.
func RetryBudget(attempts int, attemptTimeout, maxBackoff time.Duration) time.Duration {
	return time.Duration(attempts)*attemptTimeout + time.Duration(attempts-1)*maxBackoff
}

// AttemptTimeout is the per-attempt timeout whose RetryBudget is
// readTimeout: (readTimeout - (attempts-1) × maxBackoff) / attempts. It is
// zero or negative when the backoffs alone do not fit.
func AttemptTimeout(readTimeout time.Duration, attempts int, maxBackoff time.Duration) time.Duration {
	if attempts < 1 {
		return 0
	}
	return (readTimeout - time.Duration(attempts-1)*maxBackoff) / time.Duration(attempts)
}

// NewAWS loads the process's one AWS configuration through the SDK's
// default chain (region from AWS_REGION; IRSA web identity from
// AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE, whose STS client follows
// AWS_ENDPOINT_URL_STS; endpoints from AWS_ENDPOINT_URL*; AWS_CA_BUNDLE),
// with credentials cached by the SDK until they expire and the SDK's
// standard retryer (exponential backoff with jitter). It returns the
// configuration and a ClientsFunc building traced (otelhttp) Secrets
// Manager and SSM clients for a region; the clients' DropCredentials
// invalidates the one credentials cache they share, so that credentials
// AWS rejected are replaced on the next call instead of at their expiry.
// It makes no network call.
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
	drop := dropper(cfg.Credentials)
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
			DropCredentials: drop,
		}
	}
	return cfg, clients, nil
}

// dropper returns the function that forgets the credentials cached by
// creds, or nil when creds caches nothing. The SDK wraps every provider of
// its default chain (web identity, static keys) in an aws.CredentialsCache,
// and clients built from the configuration use that cache as it is; after
// Invalidate its next Retrieve asks the provider again (for IRSA, an STS
// AssumeRoleWithWebIdentity call shared by concurrent callers).
func dropper(creds aws.CredentialsProvider) func() {
	if c, ok := creds.(interface{ Invalidate() }); ok {
		return c.Invalidate
	}
	return nil
}
