package config

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/piggysec/piggy/libs/podsettings"
	"github.com/piggysec/piggy/services/secret-broker/internal/policy"
)

var tlsArgs = []string{"--tls-cert-file=c", "--tls-key-file=k", "--tls-ca-file=ca"}

func load(args []string, env map[string]string) (Config, error) {
	return Load(append(append([]string{}, tlsArgs...), args...), func(k string) (string, bool) { v, ok := env[k]; return v, ok }, io.Discard)
}

func TestDefaults(t *testing.T) {
	c, err := load(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.TokenAudience != "piggy" || c.AllowUnboundTokens || !c.PodInformer || c.TokenCacheTTL != time.Minute || c.StaleIfError != time.Hour || c.RequestTimeout != 8*time.Second {
		t.Errorf("defaults = %+v", c)
	}
	want := policy.Rules{SecretsManager: []string{"{namespace}/*"}, SSM: []string{"/{namespace}", "/{namespace}/*"}, AllowListGrants: []string{"*"}}
	if diff := cmp.Diff(want, c.Rules); diff != "" {
		t.Errorf("rules (-want +got):\n%s", diff)
	}
	limits := []any{c.KubeQPS, c.KubeBurst, c.TokenReviewQPS, c.TokenReviewBurst, c.TokenRejectionTTL, c.TokenRejectionCacheSize, c.PerSourceRate, c.PerSourceBurst, c.MaxInFlight}
	wantLimits := []any{200.0, 400, 200.0, 400, 10 * time.Second, 10000, 20.0, 50, 1024}
	if diff := cmp.Diff(wantLimits, limits); diff != "" {
		t.Errorf("limits (-want +got):\n%s", diff)
	}
}

func TestLimitsCanBeTurnedOff(t *testing.T) {
	c, err := load([]string{"--per-source-rate=0", "--max-in-flight=0", "--token-rejection-ttl=0"}, map[string]string{"TOKEN_REVIEW_QPS": "5", "TOKEN_REVIEW_BURST": "7"})
	if err != nil {
		t.Fatal(err)
	}
	if c.PerSourceRate != 0 || c.MaxInFlight != 0 || c.TokenRejectionTTL != 0 || c.TokenReviewQPS != 5 || c.TokenReviewBurst != 7 {
		t.Errorf("config = %+v", c)
	}
}

func TestEnvironment(t *testing.T) {
	c, err := load([]string{"--token-audience=flag-wins"}, map[string]string{
		"TOKEN_AUDIENCE":                   "env",
		"SECRETS_MANAGER_POLICY":           "shared/*, {namespace}/{serviceaccount}/*",
		"SSM_POLICY":                       "",
		"PIGGY_DEFAULT_SECRET_NAME_PREFIX": "prod/",
		"PIGGY_ENFORCE_SERVICE_ACCOUNT":    "true",
		"LOCKED_SETTINGS":                  "piggy-enforce-service-account, piggysec.com/piggy-enforce-integrity",
		"STALE_IF_ERROR":                   "5m",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := policy.Rules{SecretsManager: []string{"shared/*", "{namespace}/{serviceaccount}/*"}, DefaultPrefix: "prod/", AllowListGrants: []string{"*"}}
	if diff := cmp.Diff(want, c.Rules); diff != "" {
		t.Errorf("rules (-want +got):\n%s", diff)
	}
	if c.TokenAudience != "flag-wins" || c.StaleIfError != 5*time.Minute {
		t.Errorf("config = %+v", c)
	}
	if !c.Defaults.Locked[podsettings.EnforceServiceAccount] || !c.Defaults.Locked[podsettings.EnforceIntegrity] || c.Defaults.Values[podsettings.EnforceServiceAccount] != "true" {
		t.Errorf("defaults = %+v", c.Defaults)
	}
}

func TestInvalid(t *testing.T) {
	tests := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--secrets-manager-policy={ns}/*"}, nil, "placeholders"},
		{[]string{"--token-audience="}, nil, "--token-audience"},
		{[]string{"--secret-cache-ttl=0s"}, nil, "--secret-cache-ttl must be positive"},
		{[]string{"--stale-if-error=-1s"}, nil, "--stale-if-error"},
		{[]string{"--aws-max-attempts=0"}, nil, "--aws-max-attempts"},
		{[]string{"--per-source-rate=-1"}, nil, "--per-source-rate"},
		{[]string{"--per-source-burst=0"}, nil, "--per-source-burst must be at least 1"},
		{[]string{"--max-in-flight=-5"}, nil, "--max-in-flight"},
		{[]string{"--token-review-qps=0"}, nil, "--token-review-qps must be positive"},
		{[]string{"--token-rejection-ttl=-1s"}, nil, "--token-rejection-ttl"},
		{[]string{"--locked-settings=piggy-enforce-intgrity"}, nil, `"piggy-enforce-intgrity" is not a piggy annotation`},
		{nil, map[string]string{"ALLOW_UNBOUND_TOKENS": "sometimes"}, `invalid value "sometimes" for ALLOW_UNBOUND_TOKENS`},
		{[]string{"--aws-regions=eu-west-3,mars"}, nil, `--aws-regions: "mars" is not an AWS region`},
		{nil, map[string]string{"AWS_REGION": "eu-west-3.evil"}, `AWS_REGION: "eu-west-3.evil" is not an AWS region`},
		{[]string{"--negative-cache-ttl=-1s"}, nil, "--negative-cache-ttl"},
		{[]string{"--secret-cache-bytes=1Ki"}, nil, "--secret-cache-bytes must be at least"},
		{[]string{"--secret-cache-bytes=lots"}, nil, "number of bytes"},
		{[]string{"--pod-aws-read-burst=-1"}, nil, "--pod-aws-read-burst"},
		{[]string{"--pod-aws-read-interval=0s"}, nil, "--pod-aws-read-interval must be positive"},
		{[]string{"--allowed-sa-names=shared/{ns}/*"}, nil, "placeholders"},
	}
	for _, tt := range tests {
		_, err := load(tt.args, tt.env)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Load(%v, %v) = %v, want an error with %q", tt.args, tt.env, err, tt.want)
		}
	}
}

// TestAWSCostLimits: the defaults and parsing of the settings that bound
// what pods can make the broker ask of AWS.
func TestAWSCostLimits(t *testing.T) {
	c, err := load(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.NegativeCacheTTL != 30*time.Second || c.SecretCacheBytes != 64<<20 || c.PodAWSReadBurst != 10 || c.PodAWSReadInterval != 6*time.Second || len(c.AWSRegions) != 0 {
		t.Errorf("defaults = %+v", c)
	}
	c, err = load([]string{"--secret-cache-bytes=256MiB", "--aws-regions= us-east-1, eu-central-1 ,", "--allowed-sa-names=shared/*,/shared/*", "--negative-cache-ttl=0s", "--pod-aws-read-burst=0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.SecretCacheBytes != 256<<20 || c.NegativeCacheTTL != 0 || c.PodAWSReadBurst != 0 ||
		!cmp.Equal(c.AWSRegions, []string{"us-east-1", "eu-central-1"}) || !cmp.Equal(c.Rules.AllowListGrants, []string{"shared/*", "/shared/*"}) {
		t.Errorf("config = %+v", c)
	}
	if c, err = load([]string{"--allowed-sa-names="}, nil); err != nil || len(c.Rules.AllowListGrants) != 0 {
		t.Errorf("empty --allowed-sa-names = %v, %v; want no grants", c.Rules.AllowListGrants, err)
	}
	for in, want := range map[string]int64{"1048576": 1 << 20, "64Ki": 64 << 10, "2Gi": 2 << 30, "3MiB": 3 << 20} {
		var b byteSize
		if err := b.Set(in); err != nil || int64(b) != want {
			t.Errorf("Set(%q) = %d, %v; want %d", in, b, err, want)
		}
	}
	if s := byteSize(256 << 20); s.String() != "256Mi" {
		t.Errorf("String = %q, want 256Mi", s.String())
	}
}

// TestAWSRetriesFitTheRequest checks that the SDK's worst case (every
// attempt timing out, the longest backoff between them) fits in the AWS
// read's deadline, three quarters of the request timeout: the attempt
// timeout is derived from it unless given, and given settings that do not
// fit are refused.
func TestAWSRetriesFitTheRequest(t *testing.T) {
	tests := []struct {
		args        []string
		wantRead    time.Duration
		wantAttempt time.Duration
	}{
		{nil, 6 * time.Second, 4 * time.Second / 3},
		{[]string{"--request-timeout=4s", "--aws-max-attempts=2", "--aws-max-backoff=500ms"}, 3 * time.Second, 1250 * time.Millisecond},
		{[]string{"--aws-max-attempts=1"}, 6 * time.Second, 6 * time.Second},
		{[]string{"--aws-attempt-timeout=1s"}, 6 * time.Second, time.Second},
		{[]string{"--aws-attempt-timeout=1s", "--aws-max-attempts=4", "--aws-max-backoff=600ms"}, 6 * time.Second, time.Second}, // 4s + 1.8s
	}
	for _, tt := range tests {
		c, err := load(tt.args, nil)
		if err != nil {
			t.Errorf("Load(%v): %v", tt.args, err)
			continue
		}
		if c.AWSReadTimeout != tt.wantRead || c.AWSAttemptTimeout != tt.wantAttempt {
			t.Errorf("Load(%v): read %s, attempt %s; want %s, %s", tt.args, c.AWSReadTimeout, c.AWSAttemptTimeout, tt.wantRead, tt.wantAttempt)
		}
		budget := time.Duration(c.AWSMaxAttempts)*c.AWSAttemptTimeout + time.Duration(c.AWSMaxAttempts-1)*c.AWSMaxBackoff
		if budget > c.AWSReadTimeout || c.AWSReadTimeout >= c.RequestTimeout {
			t.Errorf("Load(%v): retries take up to %s, read %s, request %s", tt.args, budget, c.AWSReadTimeout, c.RequestTimeout)
		}
	}
	refused := []struct {
		args []string
		want string
	}{
		// The old defaults: 4 × 3s + 3 × 2s = 18s.
		{[]string{"--aws-max-attempts=4", "--aws-attempt-timeout=3s", "--aws-max-backoff=2s"}, "take up to 18s, more than the AWS read's 6s"},
		{[]string{"--aws-max-attempts=5", "--aws-max-backoff=2s"}, "leave 0s per attempt"},
		{[]string{"--request-timeout=1s"}, "less than 200ms"},
		{[]string{"--aws-attempt-timeout=-1s"}, "--aws-attempt-timeout must be at least 200ms"},
		{[]string{"--aws-attempt-timeout=100ms"}, "--aws-attempt-timeout must be at least 200ms"},
	}
	for _, tt := range refused {
		if _, err := load(tt.args, nil); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Load(%v) = %v, want an error with %q", tt.args, err, tt.want)
		}
	}
}

func TestGOGC(t *testing.T) {
	for env, want := range map[string]int{"": 400, "150": 150, "off": -1, "OFF": -1} {
		e := map[string]string{}
		if env != "" {
			e["GOGC"] = env
		}
		c, err := load(nil, e)
		if err != nil || c.GCPercent != want {
			t.Errorf("GOGC=%q: %d, %v; want %d", env, c.GCPercent, err, want)
		}
	}
	if _, err := load(nil, map[string]string{"GOGC": "0"}); err == nil {
		t.Error("GOGC=0 accepted")
	}
}
