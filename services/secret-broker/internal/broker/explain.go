package broker

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/piggysec/piggy/libs/podsettings"
	"github.com/piggysec/piggy/services/secret-broker/internal/awssecrets"
	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
	"github.com/piggysec/piggy/services/secret-broker/internal/policy"
)

// ExplainRequest names a container of an existing pod.
type ExplainRequest struct {
	Namespace, PodName, ContainerName string
	// Keys to check; empty means the keys the container was admitted with
	// (its PIGGY_GRANT).
	Keys []string
}

// Explanation is what a request from the container would get, without any
// value: ExplainAccess never reads AWS.
type Explanation struct {
	Source         awssecrets.Source
	ServiceAccount string
	Allowed        bool
	Reasons        []string
	Keys           []string
}

// Explain reports the broker's decision for a container of an existing
// pod from its grant, the pod's annotations, the defaults and the policy. A secret's
// PIGGY_ALLOWED_SA can only be checked at request time (it would need the
// secret), which the reasons say.
func (b *Broker) Explain(ctx context.Context, req ExplainRequest) (Explanation, error) {
	if req.Namespace == "" || req.PodName == "" || req.ContainerName == "" {
		return Explanation{}, fault.New(fault.InvalidArgument, "invalid_request", "namespace, pod name and container name are required")
	}
	pod, err := b.getter.GetPod(ctx, req.Namespace, req.PodName)
	if err != nil {
		return Explanation{}, err
	}
	ctr := findContainer(pod, req.ContainerName)
	if ctr == nil {
		return Explanation{}, fault.New(fault.NotFound, "container_not_found", "pod %s/%s has no container %q", req.Namespace, req.PodName, req.ContainerName)
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	e := Explanation{ServiceAccount: sa, Allowed: true}
	deny := func(format string, args ...any) {
		e.Allowed = false
		e.Reasons = append(e.Reasons, fmt.Sprintf(format, args...))
	}
	note := func(format string, args ...any) { e.Reasons = append(e.Reasons, fmt.Sprintf(format, args...)) }

	read := podsettings.Read(pod.Annotations, b.opts.Defaults)
	for _, w := range read.Warnings {
		note("%s", w)
	}
	if read.Denied != "" {
		deny("%s", read.Denied)
	}
	s := read.Settings
	if s.Standalone {
		note("the pod is in standalone mode: piggy-env reads AWS itself with the pod's role, not through the broker")
	}

	grant, admittedErr := b.pods.Admitted(pod, req.ContainerName)
	switch {
	case admittedErr != nil:
		deny("%s", fault.As(admittedErr).Message)
	case !s.EnforceIntegrity:
		note("integrity is not enforced: the container UID and command signature are not checked")
	default:
		note("container %q has a piggy UID and command signature; requests must present both", req.ContainerName)
	}

	src, err := b.source(s.GrantSource(pod.Namespace, sa))
	e.Source = src
	if err != nil {
		deny("%s", fault.As(err).Message)
		return e, nil
	}
	who := policy.Caller{Namespace: pod.Namespace, ServiceAccount: sa}
	kind := policy.SecretsManager
	if src.IsSSM() {
		kind = policy.SSMParameterPath
	}
	byName := b.opts.Rules.ByName(who, kind, src.Name())
	switch {
	case !byName.Allowed && !b.opts.Rules.ListMayGrant(who, src.Name()):
		deny("%s; no %s pattern matches it, so no %s may grant it (refused without reading AWS)", byName.Reason, FlagAllowListGrants, policy.AllowedSAKey)
	case s.EnforceServiceAccount:
		deny("%s; enforce-service-account is on: the secret's %s must list %s (checked at request time)", byName.Reason, policy.AllowedSAKey, who)
	case byName.Allowed:
		note("%s; if the secret has %s, it must list %s (checked at request time)", byName.Reason, policy.AllowedSAKey, who)
	default:
		deny("%s; only the secret's %s listing %s could allow it (checked at request time)", byName.Reason, policy.AllowedSAKey, who)
	}

	e.Keys = req.Keys
	if len(e.Keys) == 0 {
		e.Keys = grant.Keys
	}
	for _, k := range e.Keys {
		if admittedErr == nil && !grant.Allows(k) {
			deny("key %q was not referenced when the pod was admitted; it is refused", k)
		}
	}
	var reserved []string
	for _, k := range e.Keys {
		if strings.HasPrefix(k, policy.ReservedPrefix) {
			reserved = append(reserved, k)
		}
	}
	if len(reserved) > 0 {
		note("reserved keys are never returned: %s", strings.Join(reserved, ", "))
	}
	return e, nil
}

func findContainer(pod *corev1.Pod, name string) *corev1.Container {
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range list {
			if list[i].Name == name {
				return &list[i]
			}
		}
	}
	return nil
}
