// Package config loads the secret-broker's settings from flags and
// environment variables (each flag also reads the variable named like it,
// upper-cased, "-" → "_"), and the cluster-wide pod defaults (one variable
// per piggysec.com/ annotation, see podsettings) that the broker applies to
// pods exactly as the admission-gateway does.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/piggysec/piggy/libs/awsregion"
	"github.com/piggysec/piggy/libs/daemon"
	"github.com/piggysec/piggy/libs/flagenv"
	"github.com/piggysec/piggy/libs/podsettings"
	"github.com/piggysec/piggy/services/secret-broker/internal/awssecrets"
	"github.com/piggysec/piggy/services/secret-broker/internal/policy"
)

// Config is the secret-broker's complete configuration.
type Config struct {
	daemon.Settings
	// ListenAddress serves the HTTPS JSON gateway for piggy-env and probes.
	ListenAddress string
	// GRPCAddress serves SecretBrokerService, health and reflection over mTLS.
	GRPCAddress string
	// GatewayTLSServerName is the name the gateway verifies the broker's own
	// gRPC certificate for on its loopback connection; empty verifies the
	// chain against the CA bundle without a name check.
	GatewayTLSServerName string

	// Kubeconfig is a kubeconfig file; empty uses the in-cluster config.
	Kubeconfig string
	// KubeQPS and KubeBurst bound the broker's Kubernetes API request rate
	// for pod reads (and the informer's list and watch).
	KubeQPS   float64
	KubeBurst int
	// TokenReviewQPS and TokenReviewBurst bound TokenReviews, with a
	// client-go rate limiter of their own.
	TokenReviewQPS   float64
	TokenReviewBurst int
	// PodInformer keeps a watch-fed cache of pods (needs list and watch).
	PodInformer bool

	// OncePerStart answers a container once per container start, claimed
	// with a Lease in PodNamespace (internal/startclaim).
	OncePerStart bool
	// StartClaimWait bounds how long a request for a claimed start waits
	// for the kubelet to report a restart of the container.
	StartClaimWait time.Duration
	// PodNamespace is the broker's own namespace (the chart sets
	// POD_NAMESPACE); empty reads the in-cluster service account's.
	PodNamespace string

	// TokenAudience is the audience of the projected tokens.
	TokenAudience string
	// AllowUnboundTokens accepts tokens not bound to a pod (migration only).
	AllowUnboundTokens bool
	// LegacySecretEndpoint serves the original Piggy's POST /secret for
	// pods its webhook mutated (internal/legacy; migration only).
	LegacySecretEndpoint bool
	// TokenCacheTTL caps how long a TokenReview is cached (the token's own
	// expiry caps it too); TokenCacheSize bounds the entries.
	TokenCacheTTL  time.Duration
	TokenCacheSize int
	// TokenRejectionTTL is how long a token the apiserver rejected is
	// refused without another TokenReview (by its SHA-256);
	// TokenRejectionCacheSize bounds those entries. 0 turns it off.
	TokenRejectionTTL       time.Duration
	TokenRejectionCacheSize int

	// PerSourceRate and PerSourceBurst limit the GetSecrets requests of one
	// source (the caller's IP address) before authentication; a rate of 0
	// turns the limit off. MaxInFlight caps the requests in the broker at
	// once (0: no cap). Refusals are RESOURCE_EXHAUSTED / HTTP 429 with a
	// retry hint.
	PerSourceRate  float64
	PerSourceBurst int
	MaxInFlight    int

	// SecretCacheTTL, SecretCacheSize and StaleIfError configure the cache
	// of AWS reads.
	SecretCacheTTL  time.Duration
	SecretCacheSize int
	StaleIfError    time.Duration
	// SecretCacheBytes bounds the summed size of the cached values.
	SecretCacheBytes int64
	// NegativeCacheTTL is how long a not found, access denied or unservable
	// answer of AWS is remembered per source; 0 remembers none.
	NegativeCacheTTL time.Duration
	// PodAWSReadBurst and PodAWSReadInterval limit the AWS reads one pod
	// causes: a burst, then one more per interval. A burst of 0 sets no
	// limit.
	PodAWSReadBurst    int
	PodAWSReadInterval time.Duration
	// AWSRegions are the regions pods may name besides the broker's own.
	AWSRegions []string
	// RequestTimeout bounds one GetSecrets call, AWS retries included.
	RequestTimeout time.Duration
	// AWSReadTimeout bounds one AWS read: awssecrets.ReadTimeout of
	// RequestTimeout (three quarters), not a flag of its own.
	AWSReadTimeout time.Duration

	// AWSMaxAttempts, AWSMaxBackoff and AWSAttemptTimeout configure the
	// SDK's retryer and HTTP client. Their worst case
	// (awssecrets.RetryBudget) fits in AWSReadTimeout: AWSAttemptTimeout is
	// derived from it (awssecrets.AttemptTimeout) unless given, and a given
	// one that does not fit is refused.
	AWSMaxAttempts    int
	AWSMaxBackoff     time.Duration
	AWSAttemptTimeout time.Duration

	// GCPercent is the Go garbage collector's target (GOGC); -1 is off.
	GCPercent int

	// Rules are the authorisation rules.
	Rules policy.Rules
	// Defaults are the cluster-wide pod settings and locks.
	Defaults podsettings.Defaults
}

// Load parses args and the environment. Usage and errors of the flag
// package go to output.
func Load(args []string, lookup flagenv.Lookup, output io.Writer) (Config, error) {
	var (
		c          Config
		smPolicy   string
		ssmPolicy  string
		lockedList string
		regions    string
		grants     string
	)
	fs := flag.NewFlagSet("secret-broker", flag.ContinueOnError)
	fs.SetOutput(output)
	c.Settings.Register(fs)
	fs.StringVar(&c.ListenAddress, "listen-address", ":8443", "HTTPS address of the JSON gateway for piggy-env (/v1/secrets, /healthz, /readyz)")
	fs.StringVar(&c.GRPCAddress, "grpc-address", ":9443", "mTLS gRPC address of SecretBrokerService, health and reflection")
	fs.StringVar(&c.GatewayTLSServerName, "gateway-tls-server-name", "", "name the gateway verifies the broker's own certificate for on its loopback gRPC connection; empty checks the chain against --tls-ca-file only (the certificate needs client and server usages)")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig file; empty uses the in-cluster configuration")
	fs.Float64Var(&c.KubeQPS, "kube-api-qps", 200, "sustained Kubernetes API requests per second for pod reads (and the pod informer's list and watch); TokenReviews have their own, --token-review-qps")
	fs.IntVar(&c.KubeBurst, "kube-api-burst", 400, "burst of Kubernetes API requests for pod reads")
	fs.Float64Var(&c.TokenReviewQPS, "token-review-qps", 200, "sustained TokenReviews per second, with a rate limiter of their own so that reviews and pod reads cannot starve each other; a rollout of N new pods costs N TokenReviews")
	fs.IntVar(&c.TokenReviewBurst, "token-review-burst", 400, "burst of TokenReviews")
	fs.BoolVar(&c.PodInformer, "pod-informer", true, "keep a watch-fed cache of pods (needs list and watch on pods); otherwise every request reads its pod with GET")
	fs.BoolVar(&c.OncePerStart, "once-per-start", true, "answer each container once per container start (its restartCount in the pod status): another fetch in the same start, by the application or a kubectl exec, is refused; retries of piggy-env's own request are answered. "+
		"Claims are Leases in --pod-namespace (create, get, delete, deletecollection there), removed when the pod is deleted; needs --pod-informer. false answers every request, as before")
	fs.DurationVar(&c.StartClaimWait, "start-claim-wait", 5*time.Second, "longest a request for a start that was already answered waits for the kubelet to report that the container restarted (its status update can lag the start); at most until a second before --request-timeout")
	fs.StringVar(&c.PodNamespace, "pod-namespace", "", "the broker's own namespace, where it keeps its start claims; empty reads the in-cluster service account's namespace")
	fs.StringVar(&c.TokenAudience, "token-audience", "piggy", "audience the projected service account tokens must have (the admission-gateway's --token-audience)")
	fs.BoolVar(&c.AllowUnboundTokens, "allow-unbound-tokens", false, "accept tokens that are not bound to a pod, finding the pod by container UID (migration only; logged as a warning)")
	fs.BoolVar(&c.LegacySecretEndpoint, "legacy-secret-endpoint", false, "also serve the original Piggy's POST /secret on the HTTPS listener, for pods its webhook mutated that still run its piggy-env (migration only): "+
		"their pod-bound default service account token (the Kubernetes API's audience), the pod's original piggy-uid annotation and command signature, and only the keys the container's env references literally; every call is logged as deprecated and counted")
	fs.DurationVar(&c.TokenCacheTTL, "token-cache-ttl", time.Minute, "longest a TokenReview result is cached (never past the token's expiry)")
	fs.IntVar(&c.TokenCacheSize, "token-cache-size", 10000, "TokenReview results cached")
	fs.DurationVar(&c.TokenRejectionTTL, "token-rejection-ttl", 10*time.Second, "how long a token the Kubernetes API rejected is refused again without a TokenReview (kept by its SHA-256, never in clear); 0 disables")
	fs.IntVar(&c.TokenRejectionCacheSize, "token-rejection-cache-size", 10000, "rejected tokens remembered (32 bytes of hash and one refusal each); the oldest are forgotten first")
	fs.Float64Var(&c.PerSourceRate, "per-source-rate", 20, "GetSecrets requests per second admitted from one IP address before authentication (a pod makes one per container start); more get RESOURCE_EXHAUSTED / HTTP 429 with a retry hint, which piggy-env honours. "+
		"Callers behind one NAT or proxy share one budget; 0 disables")
	fs.IntVar(&c.PerSourceBurst, "per-source-burst", 50, "GetSecrets requests one IP address may make at once")
	fs.IntVar(&c.MaxInFlight, "max-in-flight", 1024, "GetSecrets requests the broker works on at once, over HTTPS and gRPC; more get RESOURCE_EXHAUSTED / HTTP 429 with a retry hint; 0 disables")
	fs.DurationVar(&c.SecretCacheTTL, "secret-cache-ttl", time.Minute, "how long AWS reads are cached; rotations show up within this time")
	fs.IntVar(&c.SecretCacheSize, "secret-cache-size", 1000, "secrets and SSM paths cached")
	fs.DurationVar(&c.StaleIfError, "stale-if-error", DefaultStaleIfError, "how long past its TTL a cached secret may still be served when AWS fails, throttles or does not answer within one attempt (--aws-attempt-timeout); never for not found or access denied. "+
		"The default hour keeps pods whose values were read in the last hour starting through an AWS outage that long; while AWS fails, a rotation or PIGGY_ALLOWED_SA change reaches them up to that much later. 0 disables")
	c.SecretCacheBytes = DefaultSecretCacheBytes
	fs.Var((*byteSize)(&c.SecretCacheBytes), "secret-cache-bytes", "most bytes of secret values (keys and values) the cache holds, e.g. 64Mi; the least recently used go first")
	fs.DurationVar(&c.NegativeCacheTTL, "negative-cache-ttl", 30*time.Second, "how long an AWS answer of not found, access denied or content that cannot be served is remembered per secret or SSM path; a secret created meanwhile is seen at the latest this long after. 0 disables")
	fs.IntVar(&c.PodAWSReadBurst, "pod-aws-read-burst", 10, "AWS reads one pod may cause at once (reads the cache answers cost nothing); past it the pod gets 503 naming this limit. 0 sets no limit")
	fs.DurationVar(&c.PodAWSReadInterval, "pod-aws-read-interval", 6*time.Second, "a pod gets one more AWS read every interval, up to --pod-aws-read-burst")
	fs.StringVar(&regions, "aws-regions", "", "comma-separated AWS regions pods may name with aws-region, besides the broker's own (AWS_REGION); any other is refused without an AWS call")
	fs.StringVar(&grants, "allowed-sa-names", strings.Join(policy.DefaultAllowListGrants, ","),
		"comma-separated Secrets Manager name and SSM path patterns whose PIGGY_ALLOWED_SA may grant pods outside their own policy ({namespace} and {serviceaccount} are the pod's, * matches anything); other names outside a pod's policy are refused without reading AWS. Empty: an allow-list can only restrict")
	fs.DurationVar(&c.RequestTimeout, "request-timeout", 8*time.Second, "deadline of one GetSecrets request (keep it below piggy-env's 10s); the AWS read gets three quarters of it, the SDK's attempts and backoffs included, and the rest is left to answer, with a stale value if the read fails")
	fs.IntVar(&c.AWSMaxAttempts, "aws-max-attempts", 3, "attempts per AWS call (throttling, 5xx and connection errors are retried with backoff and jitter)")
	fs.DurationVar(&c.AWSMaxBackoff, "aws-max-backoff", time.Second, "longest backoff between AWS attempts")
	fs.DurationVar(&c.AWSAttemptTimeout, "aws-attempt-timeout", 0, "deadline of one AWS HTTP attempt; 0 derives it so that every attempt and backoff fits in the AWS read: "+
		"(3/4 × --request-timeout − (attempts−1) × --aws-max-backoff) / attempts, 1.33s with the defaults; a value that does not fit is refused")
	fs.StringVar(&smPolicy, "secrets-manager-policy", strings.Join(policy.DefaultSecretsManagerPatterns, ","),
		"comma-separated Secrets Manager name patterns a pod may read besides its default secret; {namespace} and {serviceaccount} are the pod's, * matches anything; empty allows none")
	fs.StringVar(&ssmPolicy, "ssm-policy", strings.Join(policy.DefaultSSMPatterns, ","),
		"comma-separated SSM parameter path patterns a pod may read; {namespace} and {serviceaccount} are the pod's, * matches anything; empty allows none")
	c.GCPercent = 400
	fs.Var((*gcPercent)(&c.GCPercent), "gogc", "garbage collector target percentage, or off; the broker's live heap is small and its allocation rate high, so the Go default of 100 spends much CPU on collection (GOMEMLIMIT still caps memory)")
	fs.StringVar(&lockedList, "locked-settings", "", "comma-separated annotation names (without prefix) whose cluster default pods cannot override, e.g. piggy-enforce-integrity,piggy-default-secret-name-prefix")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage of secret-broker:\n")
		fs.PrintDefaults()
		fmt.Fprint(fs.Output(), defaultsHelp)
	}
	if err := flagenv.Parse(fs, "", args, lookup); err != nil {
		return Config{}, &daemon.UsageError{Err: err}
	}

	var errs []error
	if err := c.Settings.Validate(); err != nil {
		errs = append(errs, err)
	}
	c.Defaults = podsettings.LoadDefaults(lookup.Getenv, splitList(lockedList))
	for name := range c.Defaults.Locked {
		if !isAnnotation(name) {
			errs = append(errs, fmt.Errorf("--locked-settings: %q is not a piggy annotation", name))
		}
	}
	c.Rules = policy.Rules{
		SecretsManager:  splitList(smPolicy),
		SSM:             splitList(ssmPolicy),
		DefaultPrefix:   c.Defaults.Values[podsettings.DefaultSecretNamePrefix],
		DefaultSuffix:   c.Defaults.Values[podsettings.DefaultSecretNameSuffix],
		AllowListGrants: splitList(grants),
	}
	c.AWSRegions = splitList(regions)
	for _, r := range c.AWSRegions {
		if !awsregion.Valid(r) {
			errs = append(errs, fmt.Errorf("--aws-regions: %q is not an AWS region", r))
		}
	}
	if r := c.Defaults.Values[podsettings.AWSRegion]; r != "" && !awsregion.Valid(r) {
		errs = append(errs, fmt.Errorf("AWS_REGION: %q is not an AWS region", r))
	}
	for _, p := range slices.Concat(c.Rules.SecretsManager, c.Rules.SSM, c.Rules.AllowListGrants) {
		if err := policy.ValidatePattern(p); err != nil {
			errs = append(errs, err)
		}
	}
	if c.TokenAudience == "" {
		errs = append(errs, errors.New("--token-audience must not be empty"))
	}
	positive := []struct {
		flag string
		d    time.Duration
	}{
		{"--token-cache-ttl", c.TokenCacheTTL}, {"--secret-cache-ttl", c.SecretCacheTTL}, {"--request-timeout", c.RequestTimeout},
		{"--aws-max-backoff", c.AWSMaxBackoff}, {"--pod-aws-read-interval", c.PodAWSReadInterval},
	}
	for _, p := range positive {
		if p.d <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive", p.flag))
		}
	}
	if c.StaleIfError < 0 {
		errs = append(errs, errors.New("--stale-if-error must not be negative"))
	}
	if c.NegativeCacheTTL < 0 {
		errs = append(errs, errors.New("--negative-cache-ttl must not be negative"))
	}
	if c.SecretCacheBytes < minSecretCacheBytes {
		errs = append(errs, fmt.Errorf("--secret-cache-bytes must be at least %d (64Ki): one secret may be that large", minSecretCacheBytes))
	}
	if c.PodAWSReadBurst < 0 {
		errs = append(errs, errors.New("--pod-aws-read-burst must not be negative (0 sets no limit)"))
	}
	if c.TokenRejectionTTL < 0 || c.TokenRejectionCacheSize < 0 {
		errs = append(errs, errors.New("--token-rejection-ttl and --token-rejection-cache-size must not be negative (0 disables)"))
	}
	if c.PerSourceRate < 0 || c.MaxInFlight < 0 {
		errs = append(errs, errors.New("--per-source-rate and --max-in-flight must not be negative (0 disables)"))
	}
	if c.PerSourceRate > 0 && c.PerSourceBurst < 1 {
		errs = append(errs, errors.New("--per-source-burst must be at least 1"))
	}
	if c.TokenCacheSize < 1 || c.SecretCacheSize < 1 {
		errs = append(errs, errors.New("--token-cache-size and --secret-cache-size must be at least 1"))
	}
	if c.AWSMaxAttempts < 1 {
		errs = append(errs, errors.New("--aws-max-attempts must be at least 1"))
	} else if err := c.fitRetries(); err != nil {
		errs = append(errs, err)
	}
	if c.OncePerStart && !c.PodInformer {
		errs = append(errs, errors.New("--once-per-start needs --pod-informer: the claims of a pod are removed when the informer sees it deleted; turn the informer on, or --once-per-start off"))
	}
	if c.OncePerStart && c.StartClaimWait <= 0 {
		errs = append(errs, errors.New("--start-claim-wait must be positive"))
	}
	if c.KubeQPS <= 0 || c.KubeBurst < 1 {
		errs = append(errs, errors.New("--kube-api-qps must be positive and --kube-api-burst at least 1"))
	}
	if c.TokenReviewQPS <= 0 || c.TokenReviewBurst < 1 {
		errs = append(errs, errors.New("--token-review-qps must be positive and --token-review-burst at least 1"))
	}
	if err := errors.Join(errs...); err != nil {
		return Config{}, &daemon.UsageError{Err: err}
	}
	return c, nil
}

// DefaultStaleIfError is the default of --stale-if-error.
const DefaultStaleIfError = time.Hour

// DefaultSecretCacheBytes is the default of --secret-cache-bytes.
const DefaultSecretCacheBytes = 64 << 20

// minSecretCacheBytes is the largest Secrets Manager value (64 KiB).
const minSecretCacheBytes = 64 << 10

// minAttemptTimeout is the shortest AWS attempt timeout accepted, derived
// or given: below it even a healthy AWS would not answer in time.
const minAttemptTimeout = 200 * time.Millisecond

// fitRetries sets AWSReadTimeout from RequestTimeout and, unless given,
// derives AWSAttemptTimeout so that the SDK's worst case fits in it; it
// refuses retry settings that do not fit.
func (c *Config) fitRetries() error {
	c.AWSReadTimeout = awssecrets.ReadTimeout(c.RequestTimeout)
	if c.AWSAttemptTimeout == 0 {
		c.AWSAttemptTimeout = awssecrets.AttemptTimeout(c.AWSReadTimeout, c.AWSMaxAttempts, c.AWSMaxBackoff)
		if c.AWSAttemptTimeout < minAttemptTimeout {
			return fmt.Errorf("%d AWS attempts with backoffs up to --aws-max-backoff=%s leave %s per attempt in the AWS read's %s (3/4 of --request-timeout), less than %s; raise --request-timeout or lower --aws-max-attempts or --aws-max-backoff",
				c.AWSMaxAttempts, c.AWSMaxBackoff, max(c.AWSAttemptTimeout, 0), c.AWSReadTimeout, minAttemptTimeout)
		}
		return nil
	}
	if c.AWSAttemptTimeout < minAttemptTimeout {
		return fmt.Errorf("--aws-attempt-timeout must be at least %s (0 derives it)", minAttemptTimeout)
	}
	if budget := awssecrets.RetryBudget(c.AWSMaxAttempts, c.AWSAttemptTimeout, c.AWSMaxBackoff); budget > c.AWSReadTimeout {
		return fmt.Errorf("%d AWS attempts of --aws-attempt-timeout=%s with backoffs up to --aws-max-backoff=%s take up to %s, more than the AWS read's %s (3/4 of --request-timeout); lower them, or set --aws-attempt-timeout=0 to derive it",
			c.AWSMaxAttempts, c.AWSAttemptTimeout, c.AWSMaxBackoff, budget, c.AWSReadTimeout)
	}
	return nil
}

// defaultsHelp documents the variables read besides the flags'.
const defaultsHelp = `
Cluster-wide pod defaults (the same variables as the admission-gateway's; a pod's
piggysec.com/<name> annotation overrides them unless --locked-settings names it):
  AWS_SECRET_NAME, AWS_SSM_PARAMETER_PATH, AWS_REGION, AWS_SECRET_VERSION (default AWSCURRENT),
  PIGGY_ENFORCE_INTEGRITY (default true), PIGGY_ENFORCE_SERVICE_ACCOUNT (default false),
  PIGGY_DEFAULT_SECRET_NAME_PREFIX, PIGGY_DEFAULT_SECRET_NAME_SUFFIX (also the parts of the
  default secret name <prefix><namespace>/<serviceaccount><suffix> every pod may read)

AWS (read by the AWS SDK): AWS_REGION, AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE (IRSA),
  AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_STS, AWS_CA_BUNDLE
`

// gcPercent is a flag.Value for GOGC: a positive percentage or "off".
type gcPercent int

func (g *gcPercent) String() string {
	if g == nil || *g < 0 {
		return "off"
	}
	return strconv.Itoa(int(*g))
}

func (g *gcPercent) Set(s string) error {
	if strings.EqualFold(strings.TrimSpace(s), "off") {
		*g = -1
		return nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 1 {
		return errors.New("want a positive percentage or off")
	}
	*g = gcPercent(n)
	return nil
}

// byteSize is a flag.Value for a number of bytes: an integer with an
// optional Ki, Mi or Gi suffix (KiB, MiB, GiB too).
type byteSize int64

func (b *byteSize) String() string {
	if b == nil {
		return "0"
	}
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"Gi", 30}, {"Mi", 20}, {"Ki", 10}} {
		if *b != 0 && int64(*b)%(1<<u.shift) == 0 {
			return strconv.FormatInt(int64(*b)>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(*b), 10)
}

func (b *byteSize) Set(s string) error {
	s = strings.TrimSuffix(strings.TrimSpace(s), "B")
	shift := uint(0)
	for suffix, sh := range map[string]uint{"Ki": 10, "Mi": 20, "Gi": 30} {
		if strings.HasSuffix(s, suffix) {
			s, shift = strings.TrimSuffix(s, suffix), sh
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)>>shift {
		return errors.New("want a number of bytes, optionally with Ki, Mi or Gi")
	}
	*b = byteSize(n << shift)
	return nil
}

func isAnnotation(name string) bool {
	for _, n := range podsettings.Names {
		if n == name {
			return true
		}
	}
	return false
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
