// Package refs finds piggy references in an environment and replaces them.
// What a reference is comes from libs/podgrant, the rule the
// admission-gateway uses to grant the keys a container may read.
//
// A reference is an environment variable whose whole value is "piggy:KEY"
// with a non-empty KEY; the variable's name and KEY may differ
// (DB_PASSWORD=piggy:db-password). Anything else, including "piggy:" alone or
// a value that merely contains "piggy:", is an ordinary value and is left
// alone.
package refs

import (
	"slices"
	"strings"

	"github.com/piggysec/piggy/libs/podgrant"
)

// Prefix starts every reference value.
const Prefix = podgrant.ReferencePrefix

// Reserved starts the names that belong to piggy itself: PIGGY_* variables
// configure piggy-env and never reach the command, and PIGGY_* keys in a
// secret (such as PIGGY_ALLOWED_SA) configure the broker and are never given
// to the command.
const Reserved = podgrant.Reserved

// Ref is one environment variable that references a secret key.
type Ref struct {
	// Name is the environment variable's name.
	Name string
	// Key is the secret key it references.
	Key string
}

// Find returns the references in environ ("NAME=VALUE" entries), in the order
// the variables appear. When a name appears more than once the last entry
// wins, as it does for the environment the command finally receives.
// Entries without "=" and PIGGY_* variables (which the command never sees)
// are ignored.
func Find(environ []string) []Ref {
	env := Dedup(environ)
	var out []Ref
	for _, kv := range env {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || name == "" || strings.HasPrefix(name, Reserved) {
			continue
		}
		if key, ok := podgrant.ParseReference(value); ok {
			out = append(out, Ref{Name: name, Key: key})
		}
	}
	return out
}

// Keys returns the distinct keys of refs worth fetching, sorted. Reserved
// (PIGGY_*) keys are left out: their values are never given to the command.
func Keys(refs []Ref) []string {
	keys := make([]string, 0, len(refs))
	for _, r := range refs {
		if !strings.HasPrefix(r.Key, Reserved) {
			keys = append(keys, r.Key)
		}
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}

// Dedup returns environ with only the last entry of each variable name,
// keeping the position of the first one (the rule os/exec applies).
// Entries without "=" are dropped.
func Dedup(environ []string) []string {
	index := make(map[string]int, len(environ))
	out := make([]string, 0, len(environ))
	for _, kv := range environ {
		name, _, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		if i, seen := index[name]; seen {
			out[i] = kv
			continue
		}
		index[name] = len(out)
		out = append(out, kv)
	}
	return out
}

// Result is what resolving the references of an environment produced.
type Result struct {
	// Env is the environment for the command.
	Env []string
	// Unresolved lists the references whose key had no value, in
	// environment order. They are not in Env.
	Unresolved []Ref
}

// Resolve builds the command's environment from environ: every reference is
// replaced by the value of its key in values, every PIGGY_* variable is
// removed, and references whose key has no value (or is a reserved PIGGY_*
// key) are left out of the environment and reported in Result.Unresolved, so
// the command sees them unset rather than as a literal "piggy:KEY".
func Resolve(environ []string, values map[string]string) Result {
	env := Dedup(environ)
	res := Result{Env: make([]string, 0, len(env))}
	for _, kv := range env {
		name, value, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, Reserved) {
			continue
		}
		key, ok := podgrant.ParseReference(value)
		if !ok || name == "" {
			res.Env = append(res.Env, kv)
			continue
		}
		v, found := values[key]
		if !found || strings.HasPrefix(key, Reserved) {
			res.Unresolved = append(res.Unresolved, Ref{Name: name, Key: key})
			continue
		}
		res.Env = append(res.Env, name+"="+v)
	}
	return res
}
