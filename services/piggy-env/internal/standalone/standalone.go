// Package standalone fetches values straight from AWS, with the pod's own
// IAM role: Secrets Manager GetSecretValue (a JSON object in SecretString)
// or SSM GetParametersByPath (recursive, decrypted, paginated).
//
// The AWS configuration is built by hand rather than with
// config.LoadDefaultConfig, which would link SSO, IMDS, shared-file and
// process credential support into a binary copied into every pod.
// Credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY when set,
// else from web identity (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE, as IRSA
// sets them), cached for the life of the process. The SDK's own retries are
// off: the caller's retry policy decides. Every request goes out with a body
// the SDK cannot close under net/http (see libs/awsbody).
package standalone

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsretry "github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/credentials/stscreds"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"

	"github.com/piggysec/piggy/libs/awsbody"
	"github.com/piggysec/piggy/services/piggy-env/internal/config"
	"github.com/piggysec/piggy/services/piggy-env/internal/refs"
)

// SecretsManagerAPI is the part of the Secrets Manager client piggy-env uses.
type SecretsManagerAPI interface {
	GetSecretValue(ctx context.Context, in *secretsmanager.GetSecretValueInput, optFns ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error)
}

// SSMAPI is the part of the SSM client piggy-env uses.
type SSMAPI interface {
	GetParametersByPath(ctx context.Context, in *ssm.GetParametersByPathInput, optFns ...func(*ssm.Options)) (*ssm.GetParametersByPathOutput, error)
}

// Source says where values are read.
type Source struct {
	// SecretName is the Secrets Manager secret id.
	SecretName string
	// SecretVersion is a stage (AWSCURRENT, AWSPREVIOUS, custom) or a
	// version id (UUID); empty means AWSCURRENT.
	SecretVersion string
	// SSMParameterPath, when set, is read instead of SecretName.
	SSMParameterPath string
}

// String names the source for messages.
func (s Source) String() string {
	if s.SSMParameterPath != "" {
		return fmt.Sprintf("SSM parameter path %q", s.SSMParameterPath)
	}
	return fmt.Sprintf("secret %q", s.SecretName)
}

// Fetcher reads values from one source.
type Fetcher struct {
	source Source
	sm     SecretsManagerAPI
	ssm    SSMAPI
}

// NewFetcher returns a fetcher over the given clients; only the one the
// source needs is used.
func NewFetcher(source Source, sm SecretsManagerAPI, ssmClient SSMAPI) *Fetcher {
	return &Fetcher{source: source, sm: sm, ssm: ssmClient}
}

// New builds the AWS configuration and clients once from c, with every
// connection made by dialer and every request bounded by timeout. It makes no
// network call.
func New(c config.AWS, dialer *net.Dialer, timeout time.Duration) (*Fetcher, error) {
	cfg, err := NewAWSConfig(c, dialer, timeout)
	if err != nil {
		return nil, err
	}
	source := Source{SecretName: c.SecretName, SecretVersion: c.SecretVersion, SSMParameterPath: c.SSMParameterPath}
	sm := secretsmanager.NewFromConfig(cfg, func(o *secretsmanager.Options) {
		if c.Endpoints.SecretsManager != "" {
			o.BaseEndpoint = aws.String(c.Endpoints.SecretsManager)
		}
	})
	ssmClient := ssm.NewFromConfig(cfg, func(o *ssm.Options) {
		if c.Endpoints.SSM != "" {
			o.BaseEndpoint = aws.String(c.Endpoints.SSM)
		}
	})
	return NewFetcher(source, sm, ssmClient), nil
}

// NewAWSConfig returns the aws.Config for c: region, HTTP client, no SDK
// retries, and cached credentials (static keys, else web identity).
func NewAWSConfig(c config.AWS, dialer *net.Dialer, timeout time.Duration) (aws.Config, error) {
	httpClient, err := newHTTPClient(dialer, timeout, c.CABundle)
	if err != nil {
		return aws.Config{}, err
	}
	cfg := aws.Config{
		Region:     c.Region,
		HTTPClient: httpClient,
		Retryer:    func() aws.Retryer { return aws.NopRetryer{} },
	}
	switch {
	case c.AccessKeyID != "" && c.SecretAccessKey != "":
		cfg.Credentials = aws.NewCredentialsCache(credentials.NewStaticCredentialsProvider(c.AccessKeyID, c.SecretAccessKey, c.SessionToken))
	case c.RoleARN != "" && c.WebIdentityTokenFile != "":
		stsClient := sts.NewFromConfig(cfg, func(o *sts.Options) {
			if c.Endpoints.STS != "" {
				o.BaseEndpoint = aws.String(c.Endpoints.STS)
			}
		})
		session := c.RoleSessionName
		if session == "" {
			session = "piggy-env-" + strconv.FormatInt(time.Now().UnixNano(), 10)
		}
		provider := stscreds.NewWebIdentityRoleProvider(stsClient, c.RoleARN, stscreds.IdentityTokenFile(c.WebIdentityTokenFile),
			func(o *stscreds.WebIdentityRoleOptions) { o.RoleSessionName = session })
		cfg.Credentials = aws.NewCredentialsCache(provider)
	default:
		return aws.Config{}, errors.New("no AWS credentials: set AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE (IRSA) or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	}
	return cfg, nil
}

func newHTTPClient(dialer *net.Dialer, timeout time.Duration, caBundle string) (aws.HTTPClient, error) {
	var roots *x509.CertPool
	if caBundle != "" {
		pem, err := os.ReadFile(caBundle)
		if err != nil {
			return nil, fmt.Errorf("read AWS_CA_BUNDLE: %w", err)
		}
		if roots, err = x509.SystemCertPool(); err != nil {
			roots = x509.NewCertPool()
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("AWS_CA_BUNDLE %s holds no PEM certificate", caBundle)
		}
	}
	client := awshttp.NewBuildableClient().
		WithTimeout(timeout).
		WithTransportOptions(func(tr *http.Transport) {
			tr.DialContext = dialer.DialContext
			tr.TLSHandshakeTimeout = timeout
			tr.ResponseHeaderTimeout = timeout
			if roots != nil {
				if tr.TLSClientConfig == nil {
					tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
				}
				tr.TLSClientConfig.RootCAs = roots
			}
		})
	return awsbody.Client(client), nil
}

// Retryable reports whether an error of Fetch may go away on a retry, by the
// SDK's own rules (connection errors, throttling, 5xx, expired tokens) plus
// STS's InvalidIdentityToken, which AWS documents as transient for freshly
// issued tokens.
func Retryable(err error) bool {
	if awsretry.IsErrorRetryables(awsretry.DefaultRetryables).IsErrorRetryable(err) == aws.TrueTernary {
		return true
	}
	apiErr, ok := errors.AsType[smithy.APIError](err)
	return ok && apiErr.ErrorCode() == "InvalidIdentityToken"
}

// Fetch returns the values of keys that the source holds. Keys it does not
// hold are absent from the map; reserved PIGGY_* keys are never returned.
// Errors do not repeat the source: the caller names it (see Source.String).
func (f *Fetcher) Fetch(ctx context.Context, keys []string) (map[string]string, error) {
	want := make(map[string]bool, len(keys))
	for _, k := range keys {
		if !strings.HasPrefix(k, refs.Reserved) {
			want[k] = true
		}
	}
	if f.source.SSMParameterPath != "" {
		return f.fetchSSM(ctx, want)
	}
	return f.fetchSecret(ctx, want)
}

func (f *Fetcher) fetchSecret(ctx context.Context, want map[string]bool) (map[string]string, error) {
	in := &secretsmanager.GetSecretValueInput{SecretId: aws.String(f.source.SecretName)}
	switch v := f.source.SecretVersion; {
	case v == "":
		in.VersionStage = aws.String("AWSCURRENT")
	case IsVersionID(v):
		in.VersionId = aws.String(v)
	default:
		in.VersionStage = aws.String(v)
	}
	out, err := f.sm.GetSecretValue(ctx, in)
	if err != nil {
		if apiErr, ok := errors.AsType[smithy.APIError](err); ok && apiErr.ErrorCode() == "ResourceNotFoundException" && f.source.SecretVersion != "" {
			// AWS and its emulators word this differently; say which
			// secret and version were asked for.
			return nil, fmt.Errorf("secret %q has no %s, or does not exist (%s: %s)", f.source.SecretName, versionName(in), apiErr.ErrorCode(), apiErr.ErrorMessage())
		}
		return nil, err // the SDK's message names the operation and the AWS error
	}
	if out.SecretString == nil {
		if out.SecretBinary != nil {
			return nil, errors.New("the secret holds a binary value; piggy-env needs a JSON object in SecretString")
		}
		return nil, errors.New("the secret has no SecretString")
	}
	return DecodeSecretString(*out.SecretString, want)
}

// versionName names the version a GetSecretValue asked for.
func versionName(in *secretsmanager.GetSecretValueInput) string {
	if in.VersionId != nil {
		return fmt.Sprintf("version id %q", aws.ToString(in.VersionId))
	}
	return fmt.Sprintf("version stage %q", aws.ToString(in.VersionStage))
}

func (f *Fetcher) fetchSSM(ctx context.Context, want map[string]bool) (map[string]string, error) {
	values := make(map[string]string, len(want))
	names := make(map[string]string, len(want)) // key -> full parameter name
	p := ssm.NewGetParametersByPathPaginator(f.ssm, &ssm.GetParametersByPathInput{
		Path:           aws.String(f.source.SSMParameterPath),
		Recursive:      aws.Bool(true),
		WithDecryption: aws.Bool(true),
	})
	found := 0
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		found += len(page.Parameters)
		for _, param := range page.Parameters {
			name := aws.ToString(param.Name)
			key := name[strings.LastIndex(name, "/")+1:]
			if !want[key] {
				continue
			}
			if prev, dup := names[key]; dup {
				return nil, fmt.Errorf("parameters %q and %q both provide key %q", prev, name, key)
			}
			names[key] = name
			values[key] = aws.ToString(param.Value)
		}
	}
	if found == 0 {
		return nil, fmt.Errorf("SSM path %q has no parameters (or none this role may read)", f.source.SSMParameterPath)
	}
	return values, nil
}

// IsVersionID reports whether v looks like a Secrets Manager version id (a
// UUID such as 01234567-89ab-cdef-0123-456789abcdef) rather than a stage.
func IsVersionID(v string) bool {
	if len(v) != 36 {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}
