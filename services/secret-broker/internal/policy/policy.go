// Package policy decides which secrets a pod may read and which keys of a
// secret it receives (no confused deputy: the broker's IAM role can read far
// more than any one pod may).
//
// A caller (namespace and service account, from the TokenReview) may read:
//
//   - the default secret of its namespace and service account,
//     <prefix><namespace>/<serviceaccount><suffix>, where prefix and suffix
//     are the operator's cluster-wide defaults (a pod that sets its own
//     prefix or suffix chooses another name, which then needs one of the
//     other rules: otherwise a pod in namespace "a" with prefix "prod" would
//     read namespace "proda"'s default secret);
//   - a name matching one of the operator's patterns for the source
//     (Secrets Manager names or SSM paths), in which {namespace} and
//     {serviceaccount} stand for the caller's;
//   - a secret whose PIGGY_ALLOWED_SA key lists it ("namespace:sa", comma
//     separated).
//
// When the secret has PIGGY_ALLOWED_SA, only the service accounts it lists
// may read it, whatever the name. With enforce-service-account the list is
// required.
//
// Only the allow-list can let a caller read a name outside its own rules,
// and only a secret whose name matches one of the operator's
// AllowListGrants patterns may use it so (ListMayGrant): for any other name
// outside the caller's rules, the name alone decides, before the secret is
// read.
package policy

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/piggysec/piggy/libs/glob"
	"github.com/piggysec/piggy/libs/logging"
)

// AllowedSAKey is the secret key that lists the service accounts allowed to
// read the secret.
const AllowedSAKey = "PIGGY_ALLOWED_SA"

// ReservedPrefix starts keys that are configuration, never returned.
const ReservedPrefix = "PIGGY_"

// Placeholders in patterns.
const (
	NamespacePlaceholder      = "{namespace}"
	ServiceAccountPlaceholder = "{serviceaccount}"
)

// Kind is the AWS source of a secret.
type Kind int

// Source kinds.
const (
	SecretsManager Kind = iota + 1
	SSMParameterPath
)

// String names the kind in reasons.
func (k Kind) String() string {
	if k == SSMParameterPath {
		return "SSM parameter path"
	}
	return "Secrets Manager secret"
}

// Rules are the operator's authorisation settings.
type Rules struct {
	// SecretsManager are name patterns readable by the pods of a namespace.
	SecretsManager []string
	// SSM are parameter path patterns readable by the pods of a namespace.
	SSM []string
	// DefaultPrefix and DefaultSuffix are the operator's parts of the
	// default secret name.
	DefaultPrefix, DefaultSuffix string
	// AllowListGrants are the patterns of Secrets Manager names and SSM
	// paths whose PIGGY_ALLOWED_SA may grant callers outside their own name
	// rules ({namespace} and {serviceaccount} are the caller's); "*" is any
	// name, none means an allow-list can only restrict.
	AllowListGrants []string
}

// DefaultAllowListGrants lets the PIGGY_ALLOWED_SA of any secret grant it.
var DefaultAllowListGrants = []string{"*"}

// DefaultSecretsManagerPatterns keeps namespaces apart: a pod may read the
// secrets named under its namespace.
var DefaultSecretsManagerPatterns = []string{NamespacePlaceholder + "/*"}

// DefaultSSMPatterns keeps namespaces apart for SSM: a pod may read the
// parameters under /<namespace> (GetParametersByPath never leaves the path
// it is given, so "/team-a" reads /team-a/... and not /team-ab/...).
var DefaultSSMPatterns = []string{"/" + NamespacePlaceholder, "/" + NamespacePlaceholder + "/*"}

// ValidatePattern reports patterns that are empty or use unknown
// placeholders.
func ValidatePattern(p string) error {
	if strings.TrimSpace(p) == "" {
		return errors.New("empty pattern")
	}
	rest := strings.NewReplacer(NamespacePlaceholder, "", ServiceAccountPlaceholder, "").Replace(p)
	if strings.ContainsAny(rest, "{}") {
		return fmt.Errorf("pattern %q: only %s and %s placeholders are known", p, NamespacePlaceholder, ServiceAccountPlaceholder)
	}
	return nil
}

// Caller is an authenticated pod's service account.
type Caller struct {
	Namespace, ServiceAccount string
}

// String is "namespace:serviceaccount", the PIGGY_ALLOWED_SA form.
func (c Caller) String() string { return c.Namespace + ":" + c.ServiceAccount }

// NameDecision is what the name of a secret alone allows.
type NameDecision struct {
	// Allowed is true when the default name or a pattern matched.
	Allowed bool
	// Reason explains the match or its absence.
	Reason string
}

// DefaultName is the caller's default secret name.
func (r Rules) DefaultName(c Caller) string {
	return r.DefaultPrefix + c.Namespace + "/" + c.ServiceAccount + r.DefaultSuffix
}

// ByName decides what the name of a source allows for the caller.
func (r Rules) ByName(c Caller, kind Kind, name string) NameDecision {
	patterns := r.SecretsManager
	if kind == SSMParameterPath {
		patterns = r.SSM
	} else if name == r.DefaultName(c) {
		return NameDecision{Allowed: true, Reason: fmt.Sprintf("%q is the default secret of %s", name, c)}
	}
	for _, p := range patterns {
		if glob.Match(expand(p, c), name) {
			return NameDecision{Allowed: true, Reason: fmt.Sprintf("%s %q matches the broker policy %q", kind, name, p)}
		}
	}
	return NameDecision{Reason: fmt.Sprintf("%s %q is neither the default secret %q nor matched by the broker policy for namespace %q",
		kind, name, r.DefaultName(c), c.Namespace)}
}

// ListMayGrant reports whether the PIGGY_ALLOWED_SA of the source named
// name could let the caller read it although the name rules deny it. When
// it cannot, the name rules' refusal is final and the secret need not be
// read.
func (r Rules) ListMayGrant(c Caller, name string) bool {
	for _, p := range r.AllowListGrants {
		if glob.Match(expand(p, c), name) {
			return true
		}
	}
	return false
}

// expand replaces the placeholders of a pattern with the caller's names.
func expand(pattern string, c Caller) string {
	return strings.NewReplacer(NamespacePlaceholder, c.Namespace, ServiceAccountPlaceholder, c.ServiceAccount).Replace(pattern)
}

// AllowList is a secret's PIGGY_ALLOWED_SA value.
type AllowList struct {
	// Present is true when the secret has the key.
	Present bool
	// Valid is false when the key is not a string; nobody is listed then.
	Valid bool
	// Entries are the trimmed "namespace:serviceaccount" entries.
	Entries []string
}

// ParseAllowList parses a PIGGY_ALLOWED_SA value: comma-separated
// "namespace:serviceaccount" entries, spaces trimmed, empty entries skipped.
func ParseAllowList(value string) AllowList {
	l := AllowList{Present: true, Valid: true}
	for _, e := range strings.Split(value, ",") {
		if e = strings.TrimSpace(e); e != "" {
			l.Entries = append(l.Entries, e)
		}
	}
	return l
}

// Lists reports whether the list names the caller.
func (l AllowList) Lists(c Caller) bool {
	return l.Valid && slices.Contains(l.Entries, c.String())
}

// Decision is the authorisation of one request.
type Decision struct {
	Allowed bool
	// Reasons in the order they were checked.
	Reasons []string
}

// Decide combines the name decision with the secret's allow list and the
// pod's enforce-service-account setting.
func Decide(c Caller, byName NameDecision, list AllowList, enforceServiceAccount bool) Decision {
	d := Decision{Reasons: []string{byName.Reason}}
	switch {
	case list.Present && !list.Valid:
		d.Reasons = append(d.Reasons, AllowedSAKey+" is not a string; nobody may read the secret")
	case list.Present && list.Lists(c):
		d.Allowed = true
		d.Reasons = append(d.Reasons, fmt.Sprintf("%s lists %s", AllowedSAKey, c))
	case list.Present:
		d.Reasons = append(d.Reasons, fmt.Sprintf("%s does not list %s", AllowedSAKey, c))
	case enforceServiceAccount:
		d.Reasons = append(d.Reasons, fmt.Sprintf("enforce-service-account is on and the secret has no %s", AllowedSAKey))
	default:
		d.Allowed = byName.Allowed
	}
	return d
}

// Selection is what a container receives from a secret.
type Selection struct {
	// Values of the requested keys the secret holds.
	Values map[string]logging.Secret
	// Missing are requested keys the secret does not hold (reserved
	// PIGGY_* keys included), sorted.
	Missing []string
}

// InvalidKeyError is a requested key whose value cannot be served.
type InvalidKeyError struct {
	Key, Problem string
}

func (e *InvalidKeyError) Error() string { return fmt.Sprintf("key %q %s", e.Key, e.Problem) }

// Select picks the requested keys. Reserved PIGGY_* keys are never
// returned: they are reported missing. invalid maps keys the secret holds
// but cannot serve to the problem (for example "holds a JSON object"); a
// requested invalid key is an *InvalidKeyError.
func Select(requested []string, values map[string]logging.Secret, invalid map[string]string) (Selection, error) {
	s := Selection{Values: make(map[string]logging.Secret, len(requested))}
	for _, k := range requested {
		if _, done := s.Values[k]; done || slices.Contains(s.Missing, k) {
			continue
		}
		if strings.HasPrefix(k, ReservedPrefix) {
			s.Missing = append(s.Missing, k)
			continue
		}
		if problem, bad := invalid[k]; bad {
			return Selection{}, &InvalidKeyError{Key: k, Problem: problem}
		}
		v, ok := values[k]
		if !ok {
			s.Missing = append(s.Missing, k)
			continue
		}
		s.Values[k] = v
	}
	slices.Sort(s.Missing)
	return s, nil
}
