// Package podsettings reads Piggy's pod annotations (prefix piggysec.com/)
// together with the operator's cluster-wide defaults into typed settings.
//
// Every annotation has a default set on the webhook as an environment
// variable named like the annotation without the prefix, upper-cased, with
// "-" → "_" (aws-region → AWS_REGION). Values that do not parse are never
// read as false: they fall back to the safe default with a warning, or deny
// the pod when guessing would change what the pod runs or weaken security.
//
// The admission-gateway and the secret-broker read the same annotations
// through this package, so both apply the same defaults and locks.
package podsettings

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/piggysec/piggy/libs/podgrant"
)

// Prefix starts every Piggy annotation.
const Prefix = "piggysec.com/"

// Annotation names without the prefix.
const (
	AWSSecretName                 = "aws-secret-name"
	AWSSSMParameterPath           = "aws-ssm-parameter-path"
	AWSRegion                     = "aws-region"
	AWSSecretVersion              = "aws-secret-version"
	PiggyAddress                  = "piggy-address"
	Standalone                    = "standalone"
	PiggyEnvImage                 = "piggy-env-image"
	PiggyEnvImagePullPolicy       = "piggy-env-image-pull-policy"
	PiggyEnvResourceCPURequest    = "piggy-env-resource-cpu-request"
	PiggyEnvResourceMemoryRequest = "piggy-env-resource-memory-request"
	PiggyEnvResourceCPULimit      = "piggy-env-resource-cpu-limit"
	PiggyEnvResourceMemoryLimit   = "piggy-env-resource-memory-limit"
	PSPAllowPrivilegeEscalation   = "piggy-psp-allow-privilege-escalation"
	IgnoreNoEnv                   = "piggy-ignore-no-env"
	EnforceIntegrity              = "piggy-enforce-integrity"
	EnforceServiceAccount         = "piggy-enforce-service-account"
	Debug                         = "debug"
	ImagePullSecret               = "image-pull-secret"
	ImagePullSecretNamespace      = "image-pull-secret-namespace"
	ImageSkipVerifyRegistry       = "image-skip-verify-registry"
	DefaultSecretNamePrefix       = "piggy-default-secret-name-prefix"
	DefaultSecretNameSuffix       = "piggy-default-secret-name-suffix"
	DNSResolver                   = "piggy-dns-resolver"
	InitialDelay                  = "piggy-initial-delay"
	// Retries counts the retries after the first attempt.
	Retries = "piggy-retries"
	// NumberOfRetry is the original Piggy's name of the retry setting. It
	// keeps the original's meaning: it counts attempts, the first included
	// (3 means 3 attempts, that is 2 retries). Retries wins when both are set.
	NumberOfRetry = "piggy-number-of-retry"
	UID           = "piggy-uid"
)

// Names lists every annotation a pod may set (piggy-uid is written by the
// webhook, not read as a setting).
var Names = []string{
	AWSSecretName, AWSSSMParameterPath, AWSRegion, AWSSecretVersion, PiggyAddress, Standalone,
	PiggyEnvImage, PiggyEnvImagePullPolicy, PiggyEnvResourceCPURequest, PiggyEnvResourceMemoryRequest,
	PiggyEnvResourceCPULimit, PiggyEnvResourceMemoryLimit, PSPAllowPrivilegeEscalation, IgnoreNoEnv,
	EnforceIntegrity, EnforceServiceAccount, Debug, ImagePullSecret, ImagePullSecretNamespace,
	ImageSkipVerifyRegistry, DefaultSecretNamePrefix, DefaultSecretNameSuffix, DNSResolver,
	InitialDelay, Retries, NumberOfRetry,
}

// notRead are annotations of the original Piggy this version has no
// setting for, with what happens instead. A pod that sets one gets a
// warning rather than silence.
var notRead = []struct{ name, instead string }{
	{"piggy-skip-verify-tls", "piggy-env always verifies the broker's certificate (with the CA the webhook hands the pod, else the system roots)"},
}

// annotationKeys maps every name of Names to its full annotation key, so
// reading a pod's settings builds no strings.
var annotationKeys = func() map[string]string {
	m := make(map[string]string, len(Names))
	for _, n := range Names {
		m[n] = Prefix + n
	}
	return m
}()

// Key is the full annotation key of name ("piggysec.com/" + name).
func Key(name string) string {
	if k, ok := annotationKeys[name]; ok {
		return k
	}
	return Prefix + name
}

// EnvName is the cluster-wide default variable of an annotation.
func EnvName(annotation string) string {
	return strings.ToUpper(strings.ReplaceAll(annotation, "-", "_"))
}

// Defaults are the cluster-wide defaults by annotation name (without
// prefix). Locked names are operator decisions pods cannot override.
type Defaults struct {
	// Values by annotation name.
	Values map[string]string
	// Locked annotation names: a pod's value is ignored with a warning.
	Locked map[string]bool
}

// LoadDefaults reads the default of every annotation from getenv.
func LoadDefaults(getenv func(string) string, locked []string) Defaults {
	d := Defaults{Values: map[string]string{}, Locked: map[string]bool{}}
	for _, n := range Names {
		if v := getenv(EnvName(n)); v != "" {
			d.Values[n] = v
		}
	}
	for _, n := range locked {
		if n = strings.TrimPrefix(strings.TrimSpace(n), Prefix); n != "" {
			d.Locked[n] = true
		}
	}
	return d
}

// Resources of the install init container.
type Resources struct {
	CPURequest, MemoryRequest, CPULimit, MemoryLimit resource.Quantity
}

// Settings are the effective settings of one pod.
type Settings struct {
	SecretName               string
	SSMParameterPath         string
	Region                   string
	SecretVersion            string
	Address                  string
	Standalone               bool
	EnvImage                 string
	EnvImagePullPolicy       string
	Resources                Resources
	AllowPrivilegeEscalation bool
	IgnoreNoEnv              bool
	EnforceIntegrity         bool
	EnforceServiceAccount    bool
	Debug                    bool
	PullSecretName           string
	PullSecretNamespace      string
	SkipVerifyRegistry       bool
	SecretNamePrefix         string
	SecretNameSuffix         string
	DNSResolver              string
	InitialDelay             time.Duration
	// Retries after the first attempt, from piggy-retries or the original's
	// piggy-number-of-retry (attempts, converted: N attempts are N-1 retries).
	Retries int
}

// Configured reports whether a piggy source is set for the pod: a secret
// name, an SSM path or a broker address.
func (s *Settings) Configured() bool {
	return s.SecretName != "" || s.SSMParameterPath != "" || s.Address != ""
}

// DefaultSecretName is <prefix><namespace>/<serviceAccount><suffix>.
func (s *Settings) DefaultSecretName(namespace, serviceAccount string) string {
	return s.SecretNamePrefix + namespace + "/" + serviceAccount + s.SecretNameSuffix
}

// GrantSource is the source the settings name for a pod of namespace and
// serviceAccount, as the grant records it: the SSM path when set, else the
// secret name, else the default secret name; the region as set (empty: the
// broker's default).
func (s *Settings) GrantSource(namespace, serviceAccount string) podgrant.Source {
	switch {
	case s.SSMParameterPath != "":
		return podgrant.Source{Kind: podgrant.SSM, Name: s.SSMParameterPath, Region: s.Region}
	case s.SecretName != "":
		return podgrant.Source{Kind: podgrant.SecretsManager, Name: s.SecretName, Region: s.Region, Version: s.SecretVersion}
	}
	return podgrant.Source{Kind: podgrant.SecretsManager, Name: s.DefaultSecretName(namespace, serviceAccount), Region: s.Region, Version: s.SecretVersion}
}

// Result is the outcome of Read: settings, warnings for the user, and a
// denial reason when the pod must be refused.
type Result struct {
	Settings Settings
	Warnings []string
	Denied   string
}

// reader resolves one pod's values.
type reader struct {
	annotations map[string]string
	defaults    Defaults
	res         *Result
}

// Read resolves the settings of a pod from its annotations and defaults.
func Read(annotations map[string]string, defaults Defaults) Result {
	var res Result
	r := reader{annotations: annotations, defaults: defaults, res: &res}
	s := &res.Settings
	s.SecretName = r.str(AWSSecretName, "")
	s.SSMParameterPath = r.str(AWSSSMParameterPath, "")
	s.Region = r.str(AWSRegion, "")
	s.SecretVersion = r.str(AWSSecretVersion, "")
	s.Address = r.str(PiggyAddress, "")
	s.Standalone = r.boolean(Standalone, false, denyOnBad)
	s.EnvImage = r.str(PiggyEnvImage, "")
	s.EnvImagePullPolicy = r.str(PiggyEnvImagePullPolicy, "IfNotPresent")
	switch s.EnvImagePullPolicy {
	case "Always", "IfNotPresent", "Never":
	default:
		r.warn(PiggyEnvImagePullPolicy, "%q is not Always, IfNotPresent or Never; using IfNotPresent", s.EnvImagePullPolicy)
		s.EnvImagePullPolicy = "IfNotPresent"
	}
	s.Resources = Resources{
		CPURequest:    r.quantity(PiggyEnvResourceCPURequest, "50m"),
		MemoryRequest: r.quantity(PiggyEnvResourceMemoryRequest, "64Mi"),
		CPULimit:      r.quantity(PiggyEnvResourceCPULimit, "200m"),
		MemoryLimit:   r.quantity(PiggyEnvResourceMemoryLimit, "64Mi"),
	}
	s.AllowPrivilegeEscalation = r.boolean(PSPAllowPrivilegeEscalation, false, warnOnBad)
	s.IgnoreNoEnv = r.boolean(IgnoreNoEnv, false, warnOnBad)
	s.EnforceIntegrity = r.tightenOnly(EnforceIntegrity, true)
	s.EnforceServiceAccount = r.tightenOnly(EnforceServiceAccount, false)
	s.Debug = r.boolean(Debug, false, warnOnBad)
	s.PullSecretName = r.str(ImagePullSecret, "")
	s.PullSecretNamespace = r.str(ImagePullSecretNamespace, "")
	s.SkipVerifyRegistry = r.boolean(ImageSkipVerifyRegistry, false, warnOnBad)
	s.SecretNamePrefix = r.str(DefaultSecretNamePrefix, "")
	s.SecretNameSuffix = r.str(DefaultSecretNameSuffix, "")
	s.DNSResolver = r.str(DNSResolver, "")
	switch s.DNSResolver {
	case "", "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6":
	default:
		r.warn(DNSResolver, "%q is not a Go resolver network (tcp, udp, tcp4, ...); ignored", s.DNSResolver)
		s.DNSResolver = ""
	}
	s.InitialDelay = r.duration(InitialDelay)
	s.Retries = r.retries()

	for _, n := range notRead {
		if _, ok := annotations[Key(n.name)]; ok {
			r.warn(n.name, "a setting of the original Piggy that is not read here; ignored: %s", n.instead)
		}
	}

	if s.SecretName != "" && s.SSMParameterPath != "" {
		r.warn(AWSSSMParameterPath, "both a secret name and an SSM path are set; the SSM path is used")
	}
	if s.SSMParameterPath != "" && !strings.HasPrefix(s.SSMParameterPath, "/") {
		r.deny("annotation %s%s: %q must start with /", Prefix, AWSSSMParameterPath, s.SSMParameterPath)
	}
	return res
}

type badPolicy int

const (
	warnOnBad badPolicy = iota
	denyOnBad
)

// raw returns the pod's value when it may be used, else the default.
func (r reader) raw(name string) (string, bool) {
	if v, ok := r.annotations[Key(name)]; ok {
		if !r.defaults.Locked[name] {
			return strings.TrimSpace(v), true
		}
		if d := r.defaults.Values[name]; v != d {
			r.warn(name, "set by the cluster operator; the pod's value is ignored")
		}
	}
	v, ok := r.defaults.Values[name]
	return strings.TrimSpace(v), ok
}

func (r reader) str(name, def string) string {
	if v, ok := r.raw(name); ok && v != "" {
		return v
	}
	return def
}

func (r reader) boolean(name string, def bool, policy badPolicy) bool {
	v, ok := r.raw(name)
	if !ok || v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		if policy == denyOnBad {
			r.deny("annotation %s%s: %q is not a boolean (true or false)", Prefix, name, v)
		} else {
			r.warn(name, "%q is not a boolean (true or false); using %t", v, def)
		}
		return def
	}
	return b
}

// tightenOnly reads a security setting a pod may turn on but never off
// while the operator's default (or, without one, builtin) has it on: a
// weakening value is ignored with a warning.
func (r reader) tightenOnly(name string, builtin bool) bool {
	operator := builtin
	if v := strings.TrimSpace(r.defaults.Values[name]); v != "" {
		if b, err := strconv.ParseBool(v); err == nil {
			operator = b
		}
	}
	got := r.boolean(name, operator, warnOnBad)
	if operator && !got {
		r.warn(name, "the cluster operator has it on; a pod may turn it on, never off; using true")
		return true
	}
	return got
}

// defaultQuantities are the parsed defaults of the resource annotations.
var defaultQuantities = map[string]resource.Quantity{
	"50m": resource.MustParse("50m"), "64Mi": resource.MustParse("64Mi"), "200m": resource.MustParse("200m"),
}

func (r reader) quantity(name, def string) resource.Quantity {
	v := r.str(name, def)
	if q, ok := defaultQuantities[v]; ok {
		return q
	}
	q, err := resource.ParseQuantity(v)
	if err != nil {
		r.warn(name, "%q is not a resource quantity; using %s", v, def)
		return resource.MustParse(def)
	}
	return q
}

func (r reader) duration(name string) time.Duration {
	v := r.str(name, "")
	if v == "" {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		r.warn(name, "%q is not a non-negative duration such as 2s; using 0", v)
		return 0
	}
	return d
}

// retries resolves the retry count from its two names: piggy-retries
// (retries after the first attempt) and the original Piggy's
// piggy-number-of-retry (attempts, the first included). A pod's own value
// beats a cluster default whichever name either uses; at the same level
// piggy-retries wins. The two names are one setting: locking either locks
// both.
func (r reader) retries() int {
	if r.defaults.Locked[Retries] || r.defaults.Locked[NumberOfRetry] {
		for _, n := range []string{Retries, NumberOfRetry} {
			if v, ok := r.annotations[Key(n)]; ok && v != r.defaults.Values[n] {
				r.warn(n, "set by the cluster operator; the pod's value is ignored")
			}
		}
	} else if n, ok := r.retriesFrom(func(name string) (string, bool) {
		v, ok := r.annotations[Key(name)]
		return v, ok
	}); ok {
		return n
	}
	n, _ := r.retriesFrom(func(name string) (string, bool) {
		v, ok := r.defaults.Values[name]
		return v, ok
	})
	return n
}

// retriesFrom reads the retry count from one level (the pod's annotations
// or the cluster defaults); ok is false when that level sets neither name.
func (r reader) retriesFrom(lookup func(name string) (string, bool)) (n int, ok bool) {
	retries, hasRetries := lookup(Retries)
	attempts, hasAttempts := lookup(NumberOfRetry)
	switch {
	case hasRetries:
		if hasAttempts {
			r.warn(NumberOfRetry, "ignored: %s%s is set too and wins", Prefix, Retries)
		}
		return r.retryCount(strings.TrimSpace(retries)), true
	case hasAttempts:
		return r.attemptCount(strings.TrimSpace(attempts)), true
	}
	return 0, false
}

// retryCount parses piggy-retries.
func (r reader) retryCount(v string) int {
	if v == "" {
		return 0
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		r.warn(Retries, "%q is not a non-negative number of retries after the first attempt; using 0", v)
		return 0
	}
	return n
}

// attemptCount parses piggy-number-of-retry, which counts attempts as in
// the original Piggy, into retries after the first. As there, 0 means a
// single attempt (0 and 1 both mean no retry); a negative value or one that
// does not parse means a single attempt too, with a warning.
func (r reader) attemptCount(v string) int {
	if v == "" {
		return 0
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		r.warn(NumberOfRetry, "%q is not a non-negative number of attempts (it counts attempts, the first included, as in the original Piggy); using 1 attempt. For retries after the first attempt use %s%s", v, Prefix, Retries)
		return 0
	}
	return max(n-1, 0)
}

func (r reader) warn(name, format string, args ...any) {
	r.res.Warnings = append(r.res.Warnings, fmt.Sprintf("piggy: annotation %s%s: ", Prefix, name)+fmt.Sprintf(format, args...))
}

func (r reader) deny(format string, args ...any) {
	if r.res.Denied == "" {
		r.res.Denied = fmt.Sprintf(format, args...)
	}
}
