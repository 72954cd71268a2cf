// Package config turns the PIGGY_* environment set by the admission webhook
// (and the AWS_* variables of standalone mode) into typed settings.
//
// Values that do not parse (booleans, durations, integers, URLs) are errors
// that name the variable; they are never silently replaced by a default.
// Load checks the syntax of every variable; Validate checks that the settings
// a fetch needs are present for the chosen mode.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Environment variable names read by Load.
const (
	EnvAddress          = "PIGGY_ADDRESS"
	EnvUID              = "PIGGY_UID"
	EnvTokenFile        = "PIGGY_TOKEN_FILE"
	EnvCAFile           = "PIGGY_CA_FILE"
	EnvSkipVerifyTLS    = "PIGGY_SKIP_VERIFY_TLS"
	EnvStandalone       = "PIGGY_STANDALONE"
	EnvAWSSecretName    = "PIGGY_AWS_SECRET_NAME"
	EnvAWSSSMPath       = "PIGGY_AWS_SSM_PARAMETER_PATH"
	EnvAWSRegion        = "PIGGY_AWS_REGION"
	EnvAWSSecretVersion = "PIGGY_AWS_SECRET_VERSION"
	EnvIgnoreNoEnv      = "PIGGY_IGNORE_NO_ENV"
	EnvDebug            = "PIGGY_DEBUG"
	EnvDNSResolver      = "PIGGY_DNS_RESOLVER"
	EnvInitialDelay     = "PIGGY_INITIAL_DELAY"
	EnvRetries          = "PIGGY_RETRIES"
	EnvNumberOfRetry    = "PIGGY_NUMBER_OF_RETRY"
	EnvRequestTimeout   = "PIGGY_REQUEST_TIMEOUT"
	EnvTimeout          = "PIGGY_TIMEOUT"
	// EnvCABundle is read by "piggy-env install" only.
	EnvCABundle = "PIGGY_CA_BUNDLE"
)

// Defaults applied when a variable is unset or empty.
const (
	DefaultTokenFile      = "/var/run/secrets/piggysec.com/serviceaccount/token"
	DefaultCAFile         = "/piggy/ca.crt"
	DefaultRequestTimeout = 10 * time.Second
	DefaultTimeout        = 60 * time.Second
)

// Config holds every setting of a piggy-env run.
type Config struct {
	// Standalone selects standalone mode (piggy-env calls AWS itself)
	// instead of proxy mode (piggy-env asks the secret broker).
	Standalone bool
	// Proxy holds the proxy mode settings.
	Proxy Proxy
	// AWS holds the standalone mode settings.
	AWS AWS
	// IgnoreNoEnv starts the command even when values could not be fetched
	// or some references stayed unresolved.
	IgnoreNoEnv bool
	// Debug enables debug logs.
	Debug bool
	// DNSResolver, when set, is the network ("tcp", "udp", ...) the pure Go
	// resolver uses for every DNS query piggy-env makes.
	DNSResolver string
	// InitialDelay is waited before the first fetch.
	InitialDelay time.Duration
	// Retries is the number of retries after the first attempt: PIGGY_RETRIES,
	// else PIGGY_NUMBER_OF_RETRY, which counts attempts as in the original
	// Piggy (N attempts are N-1 retries; 0 means one attempt too).
	Retries int
	// RetriesFrom names the variable Retries came from; empty when neither
	// is set.
	RetriesFrom string
	// RequestTimeout bounds each attempt.
	RequestTimeout time.Duration
	// Timeout bounds the whole fetch: every attempt and the waits between
	// them, from the end of InitialDelay.
	Timeout time.Duration
}

// Proxy holds the settings of proxy mode.
type Proxy struct {
	// Address is the broker's base URL; nil when PIGGY_ADDRESS is unset.
	Address *url.URL
	// UID is the container's piggy UID, sent to the broker.
	UID string
	// TokenFile is the projected service-account token, read on every
	// attempt.
	TokenFile string
	// CAFile is the PEM bundle that verifies the broker when it exists.
	CAFile string
	// CAFileNamed is true when PIGGY_CA_FILE names CAFile: then it must
	// exist (no fallback to the system roots).
	CAFileNamed bool
	// SkipVerifyTLS disables verification of the broker's certificate.
	SkipVerifyTLS bool
}

// AWS holds the settings of standalone mode.
type AWS struct {
	// SecretName is the Secrets Manager secret id.
	SecretName string
	// SSMParameterPath, when set, reads SSM parameters under this path
	// instead of Secrets Manager.
	SSMParameterPath string
	// Region is PIGGY_AWS_REGION, else AWS_REGION, else AWS_DEFAULT_REGION.
	Region string
	// SecretVersion is a version stage or a version id; empty means
	// AWSCURRENT.
	SecretVersion string

	// RoleARN and WebIdentityTokenFile come from AWS_ROLE_ARN and
	// AWS_WEB_IDENTITY_TOKEN_FILE (IRSA); RoleSessionName from
	// AWS_ROLE_SESSION_NAME.
	RoleARN, WebIdentityTokenFile, RoleSessionName string
	// AccessKeyID, SecretAccessKey and SessionToken are static credentials
	// from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN;
	// they take precedence over web identity, as in the SDK's default chain.
	AccessKeyID, SecretAccessKey, SessionToken string
	// Endpoints are the AWS_ENDPOINT_URL* overrides (empty when unset or
	// when AWS_IGNORE_CONFIGURED_ENDPOINT_URLS is true).
	Endpoints Endpoints
	// CABundle is the AWS_CA_BUNDLE file, trusted in addition to the
	// system roots.
	CABundle string
}

// LogValue implements slog.LogValuer without the static credentials.
func (a AWS) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("secret_name", a.SecretName),
		slog.String("ssm_parameter_path", a.SSMParameterPath),
		slog.String("region", a.Region),
		slog.String("secret_version", a.SecretVersion),
		slog.String("role_arn", a.RoleARN),
		slog.Bool("static_credentials", a.AccessKeyID != ""),
	)
}

// Endpoints are custom AWS endpoint URLs, each empty when not configured.
type Endpoints struct {
	// STS is AWS_ENDPOINT_URL_STS, else AWS_ENDPOINT_URL.
	STS string
	// SecretsManager is AWS_ENDPOINT_URL_SECRETS_MANAGER, else
	// AWS_ENDPOINT_URL.
	SecretsManager string
	// SSM is AWS_ENDPOINT_URL_SSM, else AWS_ENDPOINT_URL.
	SSM string
}

// LookupFunc looks up an environment variable, like os.LookupEnv.
type LookupFunc func(name string) (string, bool)

// Lookup returns a LookupFunc over environ ("NAME=VALUE" entries; the last
// entry of a name wins).
func Lookup(environ []string) LookupFunc {
	m := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return func(name string) (string, bool) {
		v, ok := m[name]
		return v, ok
	}
}

// Load reads the settings through lookup. Every variable that is set but
// does not parse is reported, each error naming its variable.
func Load(lookup LookupFunc) (Config, error) {
	p := parser{lookup: lookup}
	c := Config{
		Standalone:     p.bool(EnvStandalone),
		IgnoreNoEnv:    p.bool(EnvIgnoreNoEnv),
		Debug:          p.bool(EnvDebug),
		DNSResolver:    p.resolverNetwork(EnvDNSResolver),
		InitialDelay:   p.duration(EnvInitialDelay, 0, true),
		RequestTimeout: p.duration(EnvRequestTimeout, DefaultRequestTimeout, false),
		Timeout:        p.duration(EnvTimeout, DefaultTimeout, false),
		Proxy: Proxy{
			Address:       p.address(EnvAddress),
			UID:           p.string(EnvUID),
			TokenFile:     p.stringOr(EnvTokenFile, DefaultTokenFile),
			CAFile:        p.stringOr(EnvCAFile, DefaultCAFile),
			CAFileNamed:   p.string(EnvCAFile) != "",
			SkipVerifyTLS: p.bool(EnvSkipVerifyTLS),
		},
		AWS: AWS{
			SecretName:           p.string(EnvAWSSecretName),
			SSMParameterPath:     p.string(EnvAWSSSMPath),
			Region:               p.first(EnvAWSRegion, "AWS_REGION", "AWS_DEFAULT_REGION"),
			SecretVersion:        p.string(EnvAWSSecretVersion),
			RoleARN:              p.string("AWS_ROLE_ARN"),
			WebIdentityTokenFile: p.string("AWS_WEB_IDENTITY_TOKEN_FILE"),
			RoleSessionName:      p.string("AWS_ROLE_SESSION_NAME"),
			AccessKeyID:          p.string("AWS_ACCESS_KEY_ID"),
			SecretAccessKey:      p.string("AWS_SECRET_ACCESS_KEY"),
			SessionToken:         p.string("AWS_SESSION_TOKEN"),
			CABundle:             p.string("AWS_CA_BUNDLE"),
		},
	}
	c.Retries, c.RetriesFrom = p.retries()
	if !p.bool("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS") {
		c.AWS.Endpoints = Endpoints{
			STS:            p.first("AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL"),
			SecretsManager: p.first("AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_ENDPOINT_URL"),
			SSM:            p.first("AWS_ENDPOINT_URL_SSM", "AWS_ENDPOINT_URL"),
		}
	}
	if len(p.errs) > 0 {
		return Config{}, Errors(p.errs)
	}
	return c, nil
}

// Validate reports what is missing for a fetch in the configured mode.
func (c Config) Validate() error {
	var errs []error
	if c.Standalone {
		if c.AWS.SecretName == "" && c.AWS.SSMParameterPath == "" {
			errs = append(errs, fmt.Errorf("standalone mode needs %s or %s", EnvAWSSecretName, EnvAWSSSMPath))
		}
		if c.AWS.Region == "" {
			errs = append(errs, fmt.Errorf("standalone mode needs a region: set %s (or AWS_REGION)", EnvAWSRegion))
		}
		hasStatic := c.AWS.AccessKeyID != "" && c.AWS.SecretAccessKey != ""
		hasWebIdentity := c.AWS.RoleARN != "" && c.AWS.WebIdentityTokenFile != ""
		if !hasStatic && !hasWebIdentity {
			errs = append(errs, errors.New("standalone mode needs AWS credentials: AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE (IRSA) or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"))
		}
	} else if c.Proxy.Address == nil {
		errs = append(errs, fmt.Errorf("%s is not set (the secret broker URL, needed unless %s=true)", EnvAddress, EnvStandalone))
	}
	if len(errs) > 0 {
		return Errors(errs)
	}
	return nil
}

// Errors are several configuration problems, reported together on one line.
type Errors []error

// Error implements error, joining the messages with "; ".
func (e Errors) Error() string {
	msgs := make([]string, len(e))
	for i, err := range e {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "; ")
}

// Unwrap returns the individual errors.
func (e Errors) Unwrap() []error { return e }

// parser collects the errors of every variable so one run reports them all.
type parser struct {
	lookup LookupFunc
	errs   []error
}

func (p *parser) string(name string) string {
	v, _ := p.lookup(name)
	return strings.TrimSpace(v)
}

func (p *parser) stringOr(name, def string) string {
	if v := p.string(name); v != "" {
		return v
	}
	return def
}

func (p *parser) first(names ...string) string {
	for _, n := range names {
		if v := p.string(n); v != "" {
			return v
		}
	}
	return ""
}

func (p *parser) bool(name string) bool {
	v := p.string(name)
	if v == "" {
		return false
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		p.errs = append(p.errs, fmt.Errorf("%s=%q is not a boolean (use true or false)", name, v))
		return false
	}
	return b
}

func (p *parser) duration(name string, def time.Duration, zeroOK bool) time.Duration {
	v := p.string(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	switch {
	case err != nil:
		p.errs = append(p.errs, fmt.Errorf("%s=%q is not a duration (use a Go duration such as 500ms, 2s or 1m)", name, v))
	case d < 0 || (d == 0 && !zeroOK):
		p.errs = append(p.errs, fmt.Errorf("%s=%q must be positive", name, v))
	default:
		return d
	}
	return def
}

// retries reads PIGGY_RETRIES (retries after the first attempt) and the
// original Piggy's PIGGY_NUMBER_OF_RETRY (attempts, the first included).
// Both are checked; PIGGY_RETRIES wins when both are set.
func (p *parser) retries() (int, string) {
	retries, hasRetries := p.retryCount(EnvRetries)
	attempts, hasAttempts := p.attemptCount(EnvNumberOfRetry)
	switch {
	case hasRetries:
		return retries, EnvRetries
	case hasAttempts:
		return max(attempts-1, 0), EnvNumberOfRetry
	}
	return 0, ""
}

// retryCount parses a count of retries after the first attempt.
func (p *parser) retryCount(name string) (int, bool) {
	v := p.string(name)
	if v == "" {
		return 0, false
	}
	n, err := strconv.Atoi(v)
	switch {
	case err != nil:
		p.errs = append(p.errs, fmt.Errorf("%s=%q is not an integer (the number of retries after the first attempt)", name, v))
	case n < 0:
		p.errs = append(p.errs, fmt.Errorf("%s=%q must not be negative (it counts retries after the first attempt; 0 means one attempt)", name, v))
	default:
		return n, true
	}
	return 0, false
}

// attemptCount parses a count of attempts, the first included, as the
// original Piggy's PIGGY_NUMBER_OF_RETRY counted them.
func (p *parser) attemptCount(name string) (int, bool) {
	v := p.string(name)
	if v == "" {
		return 0, false
	}
	n, err := strconv.Atoi(v)
	switch {
	case err != nil:
		p.errs = append(p.errs, fmt.Errorf("%s=%q is not an integer (the number of attempts, the first included, as in the original Piggy; %s counts retries after the first)", name, v, EnvRetries))
	case n < 0:
		p.errs = append(p.errs, fmt.Errorf("%s=%q must not be negative (it counts attempts, the first included; 1 means one attempt; %s counts retries after the first)", name, v, EnvRetries))
	default:
		return n, true
	}
	return 0, false
}

// RetrySetting describes where the retry count came from, for messages:
// "PIGGY_RETRIES=2", "PIGGY_NUMBER_OF_RETRY: 3 attempts" or
// "PIGGY_RETRIES unset".
func (c Config) RetrySetting() string {
	switch c.RetriesFrom {
	case EnvRetries:
		return fmt.Sprintf("%s=%d", EnvRetries, c.Retries)
	case EnvNumberOfRetry:
		if c.Retries == 0 {
			return EnvNumberOfRetry + ": 1 attempt"
		}
		return fmt.Sprintf("%s: %d attempts", EnvNumberOfRetry, c.Retries+1)
	}
	return EnvRetries + " unset"
}

func (p *parser) resolverNetwork(name string) string {
	v := p.string(name)
	switch v {
	case "", "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6":
		return v
	}
	p.errs = append(p.errs, fmt.Errorf("%s=%q is not a resolver network (use tcp, tcp4, tcp6, udp, udp4 or udp6)", name, v))
	return ""
}

func (p *parser) address(name string) *url.URL {
	v := p.string(name)
	if v == "" {
		return nil
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		p.errs = append(p.errs, fmt.Errorf("%s=%q is not an http(s) URL with a host", name, v))
		return nil
	}
	return u
}
