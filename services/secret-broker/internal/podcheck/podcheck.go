// Package podcheck ties an authenticated token to a running pod and one of
// its containers: the pod must be the one the token is bound to (same UID,
// same service account), and the caller's container UID and command
// signature must match the pod's piggy-uid annotation (written by the
// admission-gateway) when integrity is enforced, which it is by default.
// Empty or missing values never match.
//
// The pod's piggy settings (secret name, SSM path, region, version,
// enforce flags) come from its annotations and the operator's defaults
// through podsettings, exactly as the admission-gateway reads them.
package podcheck

import (
	"context"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"

	"github.com/piggysec/piggy/libs/podidentity"
	"github.com/piggysec/piggy/libs/podsettings"
	"github.com/piggysec/piggy/services/secret-broker/internal/authn"
	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
)

// PodSource reads pods.
type PodSource interface {
	// Pod returns the pod namespace/name whose UID is uid. A pod of that
	// name with another UID is returned as it is (the caller compares); a
	// missing pod is a *fault.Error of kind PermissionDenied.
	Pod(ctx context.Context, namespace, name, uid string) (*corev1.Pod, error)
	// PodsWithContainerUID returns the pods of namespace whose piggy-uid
	// annotation holds containerUID.
	PodsWithContainerUID(ctx context.Context, namespace, containerUID string) ([]*corev1.Pod, error)
}

// Container is the caller's container identity from the request.
type Container struct {
	// UID is the container's PIGGY_UID.
	UID string
	// Signature is the hex SHA-256 of the command line piggy-env runs.
	Signature string
}

// Result is a verified caller.
type Result struct {
	// Pod is the caller's pod (possibly trimmed to what the broker needs:
	// metadata with piggy annotations and the service account).
	Pod *corev1.Pod
	// ContainerName is the container whose UID matched; empty when
	// integrity is not enforced and the UID matched nothing.
	ContainerName string
	// Settings are the pod's effective piggy settings.
	Settings podsettings.Settings
	// Warnings about the pod's annotations (ignored or unparsable values).
	Warnings []string
}

// Checker verifies callers. Create it with New.
type Checker struct {
	pods     PodSource
	defaults podsettings.Defaults
	parsed   parsedCache
}

// New returns a Checker reading pods from pods and settings with defaults.
func New(pods PodSource, defaults podsettings.Defaults) *Checker {
	return &Checker{pods: pods, defaults: defaults, parsed: parsedCache{m: map[podVersion]*parsedPod{}}}
}

// parsedPod is what Check reads from a pod's annotations.
type parsedPod struct {
	settings podsettings.Result
	ids      podidentity.Identities
	idsErr   error
}

// podVersion names one version of one pod: the API server gives every
// change of a pod a new resourceVersion, so the annotations of a
// podVersion never change.
type podVersion struct{ uid, resourceVersion string }

// maxParsedPods bounds parsedCache; it is emptied when full.
const maxParsedPods = 8192

// parsedCache keeps the parsed annotations of pod versions, so the pods
// that call again and again (every container start of a rollout) are not
// parsed again. It only saves work: the result is the same as parsing.
type parsedCache struct {
	mu sync.Mutex
	m  map[podVersion]*parsedPod
}

// parse returns the parsed annotations of pod, from the cache when this
// version of the pod was parsed before.
func (c *Checker) parse(pod *corev1.Pod) *parsedPod {
	key := podVersion{string(pod.UID), pod.ResourceVersion}
	cacheable := key.uid != "" && key.resourceVersion != ""
	if cacheable {
		c.parsed.mu.Lock()
		p, ok := c.parsed.m[key]
		c.parsed.mu.Unlock()
		if ok {
			return p
		}
	}
	p := &parsedPod{settings: podsettings.Read(pod.Annotations, c.defaults)}
	p.ids, p.idsErr = podidentity.Parse(pod.Annotations[podidentity.AnnotationKey])
	if cacheable {
		c.parsed.mu.Lock()
		if len(c.parsed.m) >= maxParsedPods {
			clear(c.parsed.m)
		}
		c.parsed.m[key] = p
		c.parsed.mu.Unlock()
	}
	return p
}

// Check finds the caller's pod and verifies the container identity.
func (c *Checker) Check(ctx context.Context, id authn.Identity, ctr Container) (Result, error) {
	pod, err := c.findPod(ctx, id, ctr)
	if err != nil {
		return Result{}, err
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	if sa != id.ServiceAccount {
		return Result{}, fault.New(fault.PermissionDenied, "pod_mismatch",
			"pod %s/%s runs as service account %q, not %q of the token", pod.Namespace, pod.Name, sa, id.ServiceAccount)
	}
	parsed := c.parse(pod)
	read := parsed.settings
	res := Result{Pod: pod, Settings: read.Settings, Warnings: read.Warnings}
	if err := checkContainer(pod, parsed, read.Settings.EnforceIntegrity, ctr, &res); err != nil {
		return Result{}, err
	}
	if read.Denied != "" {
		return Result{}, fault.New(fault.InvalidArgument, "pod_settings", "pod %s/%s: %s", pod.Namespace, pod.Name, read.Denied)
	}
	return res, nil
}

// checkContainer matches the container identity against the pod's
// piggy-uid annotation and sets res.ContainerName.
func checkContainer(pod *corev1.Pod, parsed *parsedPod, enforce bool, ctr Container, res *Result) error {
	ids, err := parsed.ids, parsed.idsErr
	if err != nil {
		if enforce {
			return fault.Wrap(err, fault.PermissionDenied, "identity_unreadable",
				"pod %s/%s has an unreadable %s annotation", pod.Namespace, pod.Name, podidentity.AnnotationKey)
		}
		ids = podidentity.Identities{}
	}
	name, uidOK, sigOK := ids.Match(ctr.UID, ctr.Signature)
	if uidOK {
		res.ContainerName = name
	}
	if !enforce {
		return nil
	}
	switch {
	case ctr.UID == "":
		return fault.New(fault.PermissionDenied, "container_uid_mismatch", "the request has no container UID (PIGGY_UID)")
	case !uidOK:
		return fault.New(fault.PermissionDenied, "container_uid_mismatch",
			"the container UID matches no container of pod %s/%s (%s annotation)", pod.Namespace, pod.Name, podidentity.AnnotationKey)
	case ctr.Signature == "":
		return fault.New(fault.PermissionDenied, "signature_mismatch", "the request has no command signature")
	case !sigOK:
		return fault.New(fault.PermissionDenied, "signature_mismatch",
			"the command signature does not match container %q of pod %s/%s", name, pod.Namespace, pod.Name)
	}
	return nil
}

// findPod returns the pod the token is bound to or, for unbound tokens
// (allowed only by the operator), the one pod of the token's service
// account whose annotation holds the container UID.
func (c *Checker) findPod(ctx context.Context, id authn.Identity, ctr Container) (*corev1.Pod, error) {
	if id.Bound() {
		pod, err := c.pods.Pod(ctx, id.Namespace, id.PodName, id.PodUID)
		if err != nil {
			return nil, err
		}
		if string(pod.UID) != id.PodUID {
			return nil, fault.New(fault.PermissionDenied, "pod_mismatch",
				"the token is bound to an earlier pod named %s/%s, not the current one", id.Namespace, id.PodName)
		}
		return pod, nil
	}
	if ctr.UID == "" {
		return nil, fault.New(fault.PermissionDenied, "pod_not_found", "the token is not bound to a pod and the request has no container UID to find it by")
	}
	pods, err := c.pods.PodsWithContainerUID(ctx, id.Namespace, ctr.UID)
	if err != nil {
		return nil, err
	}
	var match []*corev1.Pod
	for _, p := range pods {
		sa := p.Spec.ServiceAccountName
		if sa == "" {
			sa = "default"
		}
		if sa == id.ServiceAccount {
			match = append(match, p)
		}
	}
	if len(match) != 1 {
		return nil, fault.New(fault.PermissionDenied, "pod_not_found",
			"the token is not bound to a pod and %s of service account %s:%s hold the container UID", podCount(len(match)), id.Namespace, id.ServiceAccount)
	}
	return match[0], nil
}

func podCount(n int) string {
	if n == 0 {
		return "no pods"
	}
	return fmt.Sprintf("%d pods", n)
}
