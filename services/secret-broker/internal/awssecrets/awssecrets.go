// Package awssecrets reads secret values from AWS Secrets Manager
// (GetSecretValue, a JSON object in SecretString) and SSM Parameter Store
// (GetParametersByPath, recursive, decrypted, paginated; the key of a
// parameter is the last element of its name).
//
// It depends on narrow interfaces with the SDK's method signatures, so that
// tests use small fakes, and on a function that returns the clients of a
// region (see NewAWS for the production one: one aws.Config per process,
// IRSA web identity through the SDK's default chain, cached credentials,
// the SDK's standard retryer, clients created once per region).
//
// When AWS rejects the credentials a call was signed with
// (UnrecognizedClientException, InvalidClientTokenId, ExpiredToken,
// ExpiredTokenException), the Fetcher drops the cached credentials and
// makes the call once more, signed with new ones; should those be rejected
// too, they are dropped as well and the call fails, and the next call gets
// new credentials again. Without this, rejected credentials would be used
// until their own expiry (an hour for IRSA).
//
// Values are held as logging.Secret and never appear in errors, spans,
// metrics or logs; errors are *fault.Error naming the secret.
package awssecrets

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/piggysec/piggy/libs/awsregion"
	"github.com/piggysec/piggy/libs/logging"
	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
)

// SecretsManagerAPI is the part of the Secrets Manager client the broker uses.
type SecretsManagerAPI interface {
	GetSecretValue(ctx context.Context, in *secretsmanager.GetSecretValueInput, optFns ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error)
}

// SSMAPI is the part of the SSM client the broker uses.
type SSMAPI interface {
	GetParametersByPath(ctx context.Context, in *ssm.GetParametersByPathInput, optFns ...func(*ssm.Options)) (*ssm.GetParametersByPathOutput, error)
}

// Clients are the AWS clients of one region.
type Clients struct {
	SecretsManager SecretsManagerAPI
	SSM            SSMAPI
	// DropCredentials, when set, forgets the cached credentials the clients
	// sign with, so that their next call gets new ones.
	DropCredentials func()
}

// ClientsFunc returns the clients of a region. NewFetcher calls it once for
// each region the operator allows.
type ClientsFunc func(region string) Clients

// DefaultStage is the Secrets Manager stage read when none is given.
const DefaultStage = "AWSCURRENT"

// maxPages bounds the SSM pages read for one path (10 parameters a page).
const maxPages = 200

// Source says where a pod's values come from.
type Source struct {
	// Region is the AWS region.
	Region string
	// SecretName is the Secrets Manager secret id (name or ARN).
	SecretName string
	// Version is a stage (AWSCURRENT, AWSPREVIOUS, custom) or a version id
	// (UUID); empty means AWSCURRENT.
	Version string
	// SSMParameterPath, when set, is read instead of SecretName.
	SSMParameterPath string
}

// IsSSM reports whether the source is an SSM parameter path.
func (s Source) IsSSM() bool { return s.SSMParameterPath != "" }

// Name is the secret name or the parameter path.
func (s Source) Name() string {
	if s.IsSSM() {
		return s.SSMParameterPath
	}
	return s.SecretName
}

// EffectiveVersion is the version read: Version, or AWSCURRENT for Secrets
// Manager; empty for SSM.
func (s Source) EffectiveVersion() string {
	if s.IsSSM() {
		return ""
	}
	if s.Version == "" {
		return DefaultStage
	}
	return s.Version
}

// String names the source in messages.
func (s Source) String() string {
	if s.IsSSM() {
		return fmt.Sprintf("SSM parameter path %q", s.SSMParameterPath)
	}
	return fmt.Sprintf("secret %q", s.SecretName)
}

// Key identifies the source's values in a cache.
func (s Source) Key() string {
	if s.IsSSM() {
		return s.Region + "\x00ssm\x00" + s.SSMParameterPath
	}
	return s.Region + "\x00sm\x00" + s.SecretName + "\x00" + s.EffectiveVersion()
}

// Secret is the content of a source.
type Secret struct {
	// Values by key: JSON strings as they are, numbers and booleans as
	// their JSON text; SSM parameter values.
	Values map[string]logging.Secret
	// Invalid maps keys that cannot be served to the problem ("holds a JSON
	// object", "is provided by both ..."); never the value.
	Invalid map[string]string
}

// Size is the content's size in bytes for the cache's bound: keys, values
// and the problems of invalid keys.
func (s *Secret) Size() int64 {
	var n int
	for k, v := range s.Values {
		n += len(k) + len(v)
	}
	for k, p := range s.Invalid {
		n += len(k) + len(p)
	}
	return int64(n)
}

// Fetcher reads sources. Create it with NewFetcher.
type Fetcher struct {
	tracer trace.Tracer
	calls  metric.Int64Counter

	// regions holds the clients of each allowed region; it is not changed
	// after NewFetcher, so that no request can add a region.
	regions map[string]Clients
	allowed []string // sorted, for messages
}

// FetcherOptions configure a Fetcher.
type FetcherOptions struct {
	// Regions are the regions the operator allows; a source in any other
	// region is refused without an AWS call.
	Regions []string
	Tracer  trace.Tracer
	Meter   metric.Meter
}

// NewFetcher returns a Fetcher with the clients of each allowed region.
func NewFetcher(clients ClientsFunc, opts FetcherOptions) (*Fetcher, error) {
	allowed, err := AllowedRegions(opts.Regions...)
	if err != nil {
		return nil, err
	}
	f := &Fetcher{tracer: opts.Tracer, regions: make(map[string]Clients, len(allowed)), allowed: allowed}
	for _, r := range allowed {
		f.regions[r] = clients(r)
	}
	if f.tracer == nil {
		f.tracer = noop.NewTracerProvider().Tracer("")
	}
	if opts.Meter != nil {
		c, err := opts.Meter.Int64Counter("piggy_secret_broker_aws_calls",
			metric.WithDescription("AWS API operations (after the SDK's retries) by operation and status (ok or the AWS error code)."))
		if err != nil {
			return nil, err
		}
		f.calls = c
	}
	return f, nil
}

// AllowedRegions returns the distinct non-empty regions, sorted. It
// refuses a name that is not an AWS region. None is a broker that cannot
// read AWS (it still starts, and refuses every request naming the missing
// setting).
func AllowedRegions(regions ...string) ([]string, error) {
	var out []string
	for _, r := range regions {
		if r = strings.TrimSpace(r); r == "" || slices.Contains(out, r) {
			continue
		}
		if !awsregion.Valid(r) {
			return nil, fmt.Errorf("%q is not an AWS region", r)
		}
		out = append(out, r)
	}
	slices.Sort(out)
	return out, nil
}

// RegionNotAllowed is the refusal of a region outside allowed: it names the
// allowed regions (the operator's settings, not a tenant's).
func RegionNotAllowed(region string, allowed []string) error {
	if !awsregion.Valid(region) {
		return fault.New(fault.InvalidArgument, "invalid_region", "%q is not an AWS region", region)
	}
	if len(allowed) == 0 {
		return fault.New(fault.InvalidArgument, "invalid_region", "region %q is not served by this broker: it has no AWS region (AWS_REGION, --aws-regions)", region)
	}
	return fault.New(fault.InvalidArgument, "invalid_region", "region %q is not served by this broker; it reads %s (the operator's --aws-regions and its own region)",
		region, strings.Join(allowed, ", "))
}

func (f *Fetcher) regionClients(region string) (Clients, error) {
	if c, ok := f.regions[region]; ok {
		return c, nil
	}
	return Clients{}, RegionNotAllowed(region, f.allowed)
}

// Fetch reads the content of src.
func (f *Fetcher) Fetch(ctx context.Context, src Source) (*Secret, error) {
	if src.Name() == "" {
		return nil, fault.New(fault.InvalidArgument, "invalid_source", "no secret name or SSM parameter path")
	}
	c, err := f.regionClients(src.Region)
	if err != nil {
		return nil, err
	}
	if src.IsSSM() {
		return f.fetchSSM(ctx, c, src)
	}
	return f.fetchSecret(ctx, c, src)
}

func (f *Fetcher) fetchSecret(ctx context.Context, c Clients, src Source) (*Secret, error) {
	in := &secretsmanager.GetSecretValueInput{SecretId: aws.String(src.SecretName)}
	if v := src.EffectiveVersion(); IsVersionID(v) {
		in.VersionId = aws.String(v)
	} else {
		in.VersionStage = aws.String(v)
	}
	ctx, span := f.startSpan(ctx, "Secrets Manager", "GetSecretValue", src,
		attribute.String("piggy.secret.name", src.SecretName), attribute.String("piggy.secret.version", src.EffectiveVersion()))
	defer span.End()
	out, err := callRenewingCredentials(ctx, f, c, span, "GetSecretValue", func() (*secretsmanager.GetSecretValueOutput, error) {
		return c.SecretsManager.GetSecretValue(ctx, in)
	})
	if err != nil {
		return nil, classify(err, src)
	}
	if out.SecretString == nil {
		if out.SecretBinary != nil {
			return nil, fault.New(fault.FailedPrecondition, "secret_binary", "%s (version %s) holds a binary value; piggy needs a JSON object in SecretString", src, src.EffectiveVersion())
		}
		return nil, fault.New(fault.FailedPrecondition, "secret_not_json", "%s (version %s) has no SecretString", src, src.EffectiveVersion())
	}
	s, err := DecodeSecretString(*out.SecretString)
	if err != nil {
		return nil, fault.Wrap(err, fault.FailedPrecondition, "secret_not_json", "%s (version %s) is not a JSON object of keys and values", src, src.EffectiveVersion())
	}
	return s, nil
}

func (f *Fetcher) fetchSSM(ctx context.Context, c Clients, src Source) (*Secret, error) {
	s := &Secret{Values: map[string]logging.Secret{}, Invalid: map[string]string{}}
	names := map[string]string{} // key -> full parameter name
	p := ssm.NewGetParametersByPathPaginator(c.SSM, &ssm.GetParametersByPathInput{
		Path:           aws.String(src.SSMParameterPath),
		Recursive:      aws.Bool(true),
		WithDecryption: aws.Bool(true),
	})
	found := 0
	for page := 1; p.HasMorePages(); page++ {
		if page > maxPages {
			return nil, fault.New(fault.FailedPrecondition, "ssm_too_many_parameters", "%s holds more than %d parameters", src, maxPages*10)
		}
		pctx, span := f.startSpan(ctx, "SSM", "GetParametersByPath", src,
			attribute.String("piggy.ssm.path", src.SSMParameterPath), attribute.Int("piggy.ssm.page", page))
		// A failed NextPage keeps its page token: calling it again asks
		// for the same page.
		out, err := callRenewingCredentials(pctx, f, c, span, "GetParametersByPath", func() (*ssm.GetParametersByPathOutput, error) {
			return p.NextPage(pctx)
		})
		span.End()
		if err != nil {
			return nil, classify(err, src)
		}
		for _, param := range out.Parameters {
			name := aws.ToString(param.Name)
			if param.Value == nil {
				continue
			}
			found++
			key := name[strings.LastIndex(name, "/")+1:]
			if prev, dup := names[key]; dup {
				delete(s.Values, key)
				s.Invalid[key] = fmt.Sprintf("is provided by both parameters %q and %q", prev, name)
				continue
			}
			names[key] = name
			s.Values[key] = logging.Secret(*param.Value)
		}
	}
	if found == 0 {
		return nil, fault.New(fault.NotFound, "secret_not_found", "%s holds no parameters in region %s", src, src.Region)
	}
	return s, nil
}

func (f *Fetcher) startSpan(ctx context.Context, service, op string, src Source, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	attrs = append(attrs,
		attribute.String("rpc.system", "aws-api"),
		attribute.String("rpc.service", service),
		attribute.String("rpc.method", op),
		attribute.String("cloud.region", src.Region))
	return f.tracer.Start(ctx, service+"."+op, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
}

// callRenewingCredentials makes one AWS call (op, after the SDK's
// retries). When AWS rejects the credentials it was signed with, it drops
// them and makes the call once more with new ones; a second rejection drops
// those too and is returned. Each call is counted; the span records the
// outcome of the last one, and an event for a rejection that was retried.
func callRenewingCredentials[T any](ctx context.Context, f *Fetcher, c Clients, span trace.Span, op string, call func() (T, error)) (T, error) {
	out, err := call()
	if dropRejected(c, err) {
		f.count(ctx, op, err)
		span.AddEvent("credentials rejected; calling again with new credentials", trace.WithAttributes(attribute.String("aws.error.code", errorCode(err))))
		out, err = call()
		dropRejected(c, err)
	}
	f.record(ctx, span, op, err)
	return out, err
}

// dropRejected drops the clients' cached credentials when err says AWS
// rejected them, and reports whether it did.
func dropRejected(c Clients, err error) bool {
	if c.DropCredentials == nil || !rejectedCredentials(err) {
		return false
	}
	c.DropCredentials()
	return true
}

// record counts a call and sets its outcome on span.
func (f *Fetcher) record(ctx context.Context, span trace.Span, op string, err error) {
	if err != nil {
		status := errorCode(err)
		span.SetStatus(codes.Error, status)
		span.SetAttributes(attribute.String("aws.error.code", status))
	}
	f.count(ctx, op, err)
}

// count adds a call to the aws_calls metric.
func (f *Fetcher) count(ctx context.Context, op string, err error) {
	if f.calls == nil {
		return
	}
	status := "ok"
	if err != nil {
		status = errorCode(err)
	}
	f.calls.Add(ctx, 1, metric.WithAttributes(attribute.String("operation", op), attribute.String("status", status)))
}

// DecodeSecretString decodes a SecretString holding a JSON object. Strings
// are kept as they are, numbers and booleans as their JSON text (1.50 stays
// "1.50"); null, objects and arrays are recorded in Invalid. Errors never
// quote the content.
func DecodeSecretString(str string) (*Secret, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(str), &raw); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, fmt.Errorf("SecretString is JSON %s, not an object", te.Value)
		}
		return nil, errors.New("SecretString is not valid JSON")
	}
	s := &Secret{Values: make(map[string]logging.Secret, len(raw)), Invalid: map[string]string{}}
	for key, v := range raw {
		v = bytes.TrimSpace(v)
		switch {
		case len(v) == 0:
			s.Invalid[key] = "has no value"
		case v[0] == '"':
			var val string
			if err := json.Unmarshal(v, &val); err != nil {
				s.Invalid[key] = "is not a valid JSON string"
				continue
			}
			s.Values[key] = logging.Secret(val)
		case v[0] == 't' || v[0] == 'f' || v[0] == '-' || ('0' <= v[0] && v[0] <= '9'):
			s.Values[key] = logging.Secret(v)
		case v[0] == 'n':
			s.Invalid[key] = "is null; values must be strings, numbers or booleans"
		case v[0] == '{':
			s.Invalid[key] = "holds a JSON object; values must be strings, numbers or booleans"
		case v[0] == '[':
			s.Invalid[key] = "holds a JSON array; values must be strings, numbers or booleans"
		default:
			s.Invalid[key] = "has an unsupported JSON value"
		}
	}
	return s, nil
}

// IsVersionID reports whether v is a Secrets Manager version id (a UUID)
// rather than a staging label.
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
