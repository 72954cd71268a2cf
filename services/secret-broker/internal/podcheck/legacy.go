package podcheck

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/piggysec/piggy/libs/podgrant"
	"github.com/piggysec/piggy/libs/podidentity"
	"github.com/piggysec/piggy/libs/podsettings"
	"github.com/piggysec/piggy/services/secret-broker/internal/authn"
	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
)

// Pods the original Piggy webhook mutated (KongZ/piggy, chart
// piggy-webhooks 0.7.x; piggy-webhooks/mutate/pod.go) carry its own
// piggy-uid annotation, a JSON object from container UID to the command
// signature, with no container names:
//
//	piggysec.com/piggy-uid: {"3f0c…":"9a1b…","77d2…":"c41e…"}
//
// Each launched container has PIGGY_UID (a UUID without dashes),
// PIGGY_POD_NAME (a fieldRef), PIGGY_ADDRESS, PIGGY_AWS_SECRET_NAME,
// PIGGY_AWS_REGION and PIGGY_AWS_SSM_PARAMETER_PATH in its env, the command
// /piggy/piggy-env and the args "--" and the original command line, and no
// PIGGY_GRANT.

// Env variables the original webhook set from the pod's settings at
// admission; the API server never lets them change on a running pod.
const (
	originalSecretNameEnv = "PIGGY_AWS_SECRET_NAME"
	originalSSMPathEnv    = "PIGGY_AWS_SSM_PARAMETER_PATH"
	originalRegionEnv     = "PIGGY_AWS_REGION"
)

// OriginalUIDs is the original webhook's piggy-uid annotation: container
// UID → signature of its command line.
type OriginalUIDs map[string]string

// ParseOriginalUIDs decodes an annotation of the original format. This
// Piggy's format (objects keyed by container name) is not one.
func ParseOriginalUIDs(value string) (OriginalUIDs, error) {
	if strings.TrimSpace(value) == "" {
		return nil, fmt.Errorf("the annotation %s is empty", podidentity.AnnotationKey)
	}
	var ids OriginalUIDs
	if err := json.Unmarshal([]byte(value), &ids); err != nil || ids == nil {
		return nil, fmt.Errorf(`the annotation %s is not the original webhook's {"<uid>":"<signature>"} object`, podidentity.AnnotationKey)
	}
	return ids, nil
}

// Match reports whether the annotation gives uid the signature signature.
// It compares in constant time with every entry; empty values never match.
func (ids OriginalUIDs) Match(uid, signature string) bool {
	ok := 0
	if uid == "" || signature == "" {
		return false
	}
	for u, s := range ids {
		if u == "" || s == "" {
			continue
		}
		ok |= subtle.ConstantTimeCompare([]byte(u), []byte(uid)) & subtle.ConstantTimeCompare([]byte(s), []byte(signature))
	}
	return ok == 1
}

// CheckLegacy verifies a caller of the original protocol: a container the
// original webhook launched, whose launcher (the original piggy-env) sends
// its PIGGY_UID and command signature but no keys. The token must be bound
// to the pod; the UID and signature must match both the container's spec
// (its PIGGY_UID and args, which never change) and the pod's piggy-uid
// annotation in the original format; integrity is always enforced. The
// container must have no PIGGY_GRANT: containers this Piggy launched use
// GetSecrets.
//
// The grant is made here from the pod: the source its settings name now
// (annotations and the operator's defaults, as for any request), which
// must agree with the PIGGY_AWS_* values the original webhook wrote into
// the container's env, and the keys the container references with literal
// "piggy:KEY" env values (podgrant.Reference). References through
// ConfigMaps or Secrets are not granted: they can change after admission.
func (c *Checker) CheckLegacy(ctx context.Context, id authn.Identity, ctr Container) (Result, error) {
	if !id.Bound() {
		return Result{}, fault.New(fault.Unauthenticated, "token_unbound",
			"the token of %s:%s is not bound to a pod; the original protocol is served only for pod-bound tokens", id.Namespace, id.ServiceAccount)
	}
	pod, err := c.callersPod(ctx, id, ctr)
	if err != nil {
		return Result{}, err
	}
	raw, ok := pod.Annotations[podidentity.AnnotationKey]
	if !ok {
		return Result{}, fault.New(fault.PermissionDenied, "not_original_pod",
			"pod %s/%s has no %s annotation: the original Piggy webhook did not mutate it", pod.Namespace, pod.Name, podidentity.AnnotationKey)
	}
	ids, err := ParseOriginalUIDs(raw)
	if err != nil {
		return Result{}, fault.New(fault.PermissionDenied, "not_original_pod",
			"pod %s/%s: %s; a pod this Piggy mutated runs a piggy-env that asks POST /v1/secrets", pod.Namespace, pod.Name, err.Error())
	}
	parsed := c.parse(pod)
	l, err := checkContainer(pod, parsed, true, ctr)
	if err != nil {
		return Result{}, err
	}
	if !ids.Match(ctr.UID, ctr.Signature) {
		return Result{}, fault.New(fault.PermissionDenied, "signature_mismatch",
			"the container UID and command signature do not match the %s annotation of pod %s/%s", podidentity.AnnotationKey, pod.Namespace, pod.Name)
	}
	spec := specContainer(pod, l.name)
	if spec == nil { // checkContainer found it in this spec
		return Result{}, fault.New(fault.Internal, "internal", "container %q of pod %s/%s vanished", l.name, pod.Namespace, pod.Name)
	}
	if hasEnv(spec, podgrant.EnvName) {
		return Result{}, fault.New(fault.PermissionDenied, "not_original_pod",
			"container %q of pod %s/%s was admitted by this Piggy (it has %s); its piggy-env asks POST /v1/secrets", l.name, pod.Namespace, pod.Name, podgrant.EnvName)
	}
	read := parsed.settings
	if read.Denied != "" {
		return Result{}, fault.New(fault.InvalidArgument, "pod_settings", "pod %s/%s: %s", pod.Namespace, pod.Name, read.Denied)
	}
	st := read.Settings
	src := st.GrantSource(pod.Namespace, id.ServiceAccount)
	if diff := c.originalSettingsDiffer(spec, src); diff != "" {
		return Result{}, fault.New(fault.PermissionDenied, "pod_settings_changed",
			"pod %s/%s: its settings differ from what the original webhook admitted (%s); settings cannot change after admission, recreate the pod", pod.Namespace, pod.Name, diff)
	}
	keys := LiteralReferences(spec)
	if len(keys) == 0 {
		return Result{}, fault.New(fault.PermissionDenied, "key_not_granted",
			"container %q of pod %s/%s has no env value of the form piggy:KEY; the original piggy-env is given only the keys its container's env references literally (references in ConfigMaps or Secrets are not served): recreate the pod so that this Piggy admits it",
			l.name, pod.Namespace, pod.Name)
	}
	return Result{
		Pod: pod, ContainerName: l.name, Settings: st, Warnings: read.Warnings,
		Grant:        podgrant.New(src, true, st.EnforceServiceAccount, keys),
		RestartCount: RestartCount(pod, l.name),
	}, nil
}

// originalSettingsDiffer compares the source the pod's settings name now
// with the PIGGY_AWS_* values the original webhook wrote into the
// container at admission; unset values are not compared (releases of the
// original did not all write them).
func (c *Checker) originalSettingsDiffer(spec *corev1.Container, src podgrant.Source) string {
	ssmPath, _ := lastEnv(spec, originalSSMPathEnv)
	name, _ := lastEnv(spec, originalSecretNameEnv)
	switch {
	case ssmPath != "" && (src.Kind != podgrant.SSM || src.Name != ssmPath):
		return fmt.Sprintf("admitted SSM path %q, now %s %q", ssmPath, src.Kind, src.Name)
	case ssmPath == "" && name != "" && (src.Kind != podgrant.SecretsManager || src.Name != name):
		return fmt.Sprintf("admitted secret %q, now %s %q", name, src.Kind, src.Name)
	}
	region, _ := lastEnv(spec, originalRegionEnv)
	now := src.Region
	if now == "" {
		now = c.defaults.Values[podsettings.AWSRegion]
	}
	if region != "" && now != "" && region != now {
		return fmt.Sprintf("admitted region %q, now %q", region, now)
	}
	return ""
}

// LiteralReferences are the keys container c references with a literal
// env value "piggy:KEY" (podgrant.Reference), from the definition of each
// name that takes effect (the last), sorted and distinct.
func LiteralReferences(c *corev1.Container) []string {
	var keys []string
	for i, e := range c.Env {
		if e.ValueFrom != nil || slices.ContainsFunc(c.Env[i+1:], func(later corev1.EnvVar) bool { return later.Name == e.Name }) {
			continue
		}
		if k, ok := podgrant.Reference(e.Name, e.Value); ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}

// specContainer is the container (or init container) named name.
func specContainer(pod *corev1.Pod, name string) *corev1.Container {
	for _, group := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range group {
			if group[i].Name == name {
				return &group[i]
			}
		}
	}
	return nil
}

// hasEnv reports whether c defines name at all.
func hasEnv(c *corev1.Container, name string) bool {
	return slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == name })
}

// keptForOriginal reports whether the pod cache keeps e of a container
// without PIGGY_GRANT: what CheckLegacy reads of a container the original
// webhook launched.
func keptForOriginal(e corev1.EnvVar) bool {
	switch e.Name {
	case originalSecretNameEnv, originalSSMPathEnv, originalRegionEnv:
		return true
	}
	_, ok := podgrant.ParseReference(e.Value)
	return ok && e.ValueFrom == nil
}
