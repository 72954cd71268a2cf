// Package mutate decides how a Pod must change for Piggy and builds the
// RFC 6902 JSON patch that makes exactly those changes.
//
// A pod is mutated when a piggy source is configured for it (secret name,
// SSM path or broker address, from annotations or cluster-wide defaults) and
// at least one of its containers or init containers references a "piggy:"
// value: a literal env value, a ConfigMap/Secret key through valueFrom, or
// an envFrom ConfigMap/Secret. Referencing containers run
// /piggy/piggy-env -- <original command line>; an init container installs
// the launcher into a memory-backed volume first.
//
// The patch only touches what Piggy owns (its volumes, its init container,
// the command/args/env/volumeMounts of referencing containers, and the
// piggy-uid annotation), so fields the compiled API types do not know
// survive. Running Mutate again on its own output yields no patch.
//
// The names of what Piggy adds are reserved: a pod that brings its own
// piggy-env or piggy-token volume, install-piggy-env container,
// piggy-uid annotation, PIGGY_UID or /piggy/piggy-env command is denied,
// unless it is exactly Piggy's earlier output (checkReserved).
package mutate
