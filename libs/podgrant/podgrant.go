// Package podgrant is the contract between the admission-gateway, which
// decides at admission what a launched container may read, and the
// secret-broker, which serves nothing else: the container's PIGGY_GRANT
// environment variable.
//
// The API server never lets the env of a running pod's container change,
// so the grant is what was admitted, whoever may patch the pod later. It
// holds the source the pod's settings chose, the security settings in
// force, and the keys the container references: literal "piggy:KEY"
// values and the references in the ConfigMaps and Secrets its env and
// envFrom name, as they were at admission.
//
//	{"v":1,"source":{"kind":"secretsmanager","name":"team/app"},"enforceIntegrity":true,"keys":["db","token"]}
//
// It also holds the rule for what a reference is, which piggy-env uses to
// decide what to ask for.
package podgrant

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// EnvName is the container variable holding the grant.
const EnvName = "PIGGY_GRANT"

// ReferencePrefix starts every value piggy-env replaces.
const ReferencePrefix = "piggy:"

// Reserved starts the names that belong to Piggy: PIGGY_* variables are
// never references (piggy-env removes them before exec) and PIGGY_* keys
// are never served.
const Reserved = "PIGGY_"

// version is the grant format this package writes and reads.
const version = 1

// Source kinds.
const (
	SecretsManager = "secretsmanager"
	SSM            = "ssm"
)

// Reference reports the key an env variable references: its whole value
// is "piggy:KEY" with a non-empty KEY, and neither its name nor KEY is
// reserved.
func Reference(name, value string) (key string, ok bool) {
	key, ok = ParseReference(value)
	if !ok || strings.HasPrefix(name, Reserved) || strings.HasPrefix(key, Reserved) {
		return "", false
	}
	return key, true
}

// ParseReference reports the key a value references: the whole value is
// "piggy:KEY" with a non-empty KEY. Anything else, "piggy:" alone or a
// value that merely contains "piggy:", is an ordinary value. piggy-env
// replaces every such value (a reserved KEY is left unset, never given);
// Reference adds the reserved-name rule for what is granted.
func ParseReference(value string) (key string, ok bool) {
	key, ok = strings.CutPrefix(value, ReferencePrefix)
	if !ok || key == "" {
		return "", false
	}
	return key, true
}

// Source is where the values come from, as the pod's settings named it at
// admission.
type Source struct {
	// Kind is SecretsManager or SSM.
	Kind string `json:"kind"`
	// Name is the secret name or the SSM parameter path.
	Name string `json:"name"`
	// Region is the pod's region setting; empty: the broker's default.
	Region string `json:"region,omitempty"`
	// Version is the secret version stage or id; empty: current.
	Version string `json:"version,omitempty"`
}

// Grant is what one container was admitted to read.
type Grant struct {
	V                     int    `json:"v"`
	Source                Source `json:"source"`
	EnforceIntegrity      bool   `json:"enforceIntegrity"`
	EnforceServiceAccount bool   `json:"enforceServiceAccount"`
	// Keys are the referenced keys, sorted and distinct.
	Keys []string `json:"keys"`
}

// New returns a grant of keys (in any order, repeats allowed) from src.
func New(src Source, enforceIntegrity, enforceServiceAccount bool, keys []string) Grant {
	k := slices.Clone(keys)
	slices.Sort(k)
	if k == nil {
		k = []string{}
	}
	return Grant{V: version, Source: src, EnforceIntegrity: enforceIntegrity, EnforceServiceAccount: enforceServiceAccount, Keys: slices.Compact(k)}
}

// Format encodes the grant deterministically.
func (g Grant) Format() string {
	b, _ := json.Marshal(g) // strings, bools and a slice of strings always marshal
	return string(b)
}

// Parse decodes a PIGGY_GRANT value.
func Parse(value string) (Grant, error) {
	var g Grant
	if err := json.Unmarshal([]byte(value), &g); err != nil {
		return Grant{}, fmt.Errorf("%s is not a grant: %w", EnvName, err)
	}
	if g.V != version {
		return Grant{}, fmt.Errorf("%s has format version %d; this version reads %d", EnvName, g.V, version)
	}
	if g.Source.Kind != SecretsManager && g.Source.Kind != SSM || g.Source.Name == "" {
		return Grant{}, fmt.Errorf("%s names no source", EnvName)
	}
	if !slices.IsSorted(g.Keys) {
		slices.Sort(g.Keys)
	}
	return g, nil
}

// Allows reports whether the grant lists key.
func (g Grant) Allows(key string) bool {
	_, ok := slices.BinarySearch(g.Keys, key)
	return ok
}

// Union adds other's keys to g's (the grants of one pod share the source
// and settings; the caller checks that they do).
func (g Grant) Union(other Grant) Grant {
	return New(g.Source, g.EnforceIntegrity, g.EnforceServiceAccount, append(slices.Clone(g.Keys), other.Keys...))
}

// SameSettings reports the first setting in which g and other differ, as
// "setting: a vs b", or "".
func (g Grant) SameSettings(other Grant) string {
	switch {
	case g.Source.Kind != other.Source.Kind:
		return fmt.Sprintf("source kind %q vs %q", g.Source.Kind, other.Source.Kind)
	case g.Source.Name != other.Source.Name:
		return fmt.Sprintf("source %q vs %q", g.Source.Name, other.Source.Name)
	case g.Source.Region != other.Source.Region:
		return fmt.Sprintf("region %q vs %q", g.Source.Region, other.Source.Region)
	case g.Source.Version != other.Source.Version:
		return fmt.Sprintf("version %q vs %q", g.Source.Version, other.Source.Version)
	case g.EnforceIntegrity != other.EnforceIntegrity:
		return fmt.Sprintf("enforce-integrity %t vs %t", g.EnforceIntegrity, other.EnforceIntegrity)
	case g.EnforceServiceAccount != other.EnforceServiceAccount:
		return fmt.Sprintf("enforce-service-account %t vs %t", g.EnforceServiceAccount, other.EnforceServiceAccount)
	}
	return ""
}
