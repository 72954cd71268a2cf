// Package podcheck ties an authenticated token to a running pod and one of
// its containers: the pod must be the one the token is bound to (same UID,
// same service account), and the caller's container UID and command
// signature must match a container Piggy launched (its PIGGY_UID and the
// command line after "--", from the pod spec, which never changes on a
// running pod) when integrity is enforced, which it is by default. Empty
// or missing values never match.
//
// What the container may read is its PIGGY_GRANT, written by the
// admission-gateway (libs/podgrant). The pod's piggy settings (secret
// name, SSM path, region, version, enforce flags) are read again from its
// annotations and the operator's defaults through podsettings, exactly as
// the admission-gateway reads them, and must still be those of the grant:
// a pod whose annotations were changed after admission is refused.
package podcheck

import (
	"context"
	"crypto/subtle"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"

	"github.com/piggysec/piggy/libs/podgrant"
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
	// Grant is what the container was admitted to read (without a
	// container, what the pod's launched containers were).
	Grant podgrant.Grant
	// RestartCount is the container's restartCount in the pod status as
	// the kubelet last reported it; 0 before it reported one.
	RestartCount int32
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

// parsedPod is what Check reads from a pod: its settings (annotations and
// defaults) and the containers Piggy launched, from the spec.
type parsedPod struct {
	settings podsettings.Result
	launched []launched
	// current are the settings read now, as a grant without keys, the
	// broker's default region filled in.
	current podgrant.Grant
}

// launched is a container that starts through piggy-env in proxy mode,
// as its spec (which never changes on a running pod) says.
type launched struct {
	name string
	// uid is its PIGGY_UID, signature that of its command line.
	uid, signature string
	// grant is its PIGGY_GRANT; grantErr says why there is none.
	grant    podgrant.Grant
	grantErr error
}

// launchedContainers lists the containers of pod with a PIGGY_UID.
func launchedContainers(pod *corev1.Pod) []launched {
	var out []launched
	for _, group := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range group {
			c := &group[i]
			uid, ok := lastEnv(c, "PIGGY_UID")
			if !ok || uid == "" || len(c.Args) == 0 || c.Args[0] != "--" {
				continue
			}
			l := launched{name: c.Name, uid: uid, signature: podidentity.Signature(c.Args[1:])}
			if raw, ok := lastEnv(c, podgrant.EnvName); !ok {
				l.grantErr = fmt.Errorf("container %q of pod %s/%s has no %s: it was admitted by an admission-gateway older than this broker; recreate the pod", c.Name, pod.Namespace, pod.Name, podgrant.EnvName)
			} else if l.grant, l.grantErr = podgrant.Parse(raw); l.grantErr != nil {
				l.grantErr = fmt.Errorf("container %q of pod %s/%s: %w", c.Name, pod.Namespace, pod.Name, l.grantErr)
			}
			out = append(out, l)
		}
	}
	return out
}

// lastEnv is the plain value of the definition of name that takes effect
// (the last); a definition from valueFrom counts as none, since what it
// refers to can change.
func lastEnv(c *corev1.Container, name string) (string, bool) {
	for i := len(c.Env) - 1; i >= 0; i-- {
		if c.Env[i].Name == name {
			return c.Env[i].Value, c.Env[i].ValueFrom == nil
		}
	}
	return "", false
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
	p := &parsedPod{settings: podsettings.Read(pod.Annotations, c.defaults), launched: launchedContainers(pod)}
	st := p.settings.Settings
	p.current = c.withDefaultRegion(podgrant.New(st.GrantSource(pod.Namespace, serviceAccount(pod)), st.EnforceIntegrity, st.EnforceServiceAccount, nil))
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

// callersPod finds the caller's pod and checks that it runs as the
// token's service account.
func (c *Checker) callersPod(ctx context.Context, id authn.Identity, ctr Container) (*corev1.Pod, error) {
	pod, err := c.findPod(ctx, id, ctr)
	if err != nil {
		return nil, err
	}
	if sa := serviceAccount(pod); sa != id.ServiceAccount {
		return nil, fault.New(fault.PermissionDenied, "pod_mismatch",
			"pod %s/%s runs as service account %q, not %q of the token", pod.Namespace, pod.Name, sa, id.ServiceAccount)
	}
	return pod, nil
}

// Check finds the caller's pod and verifies the container identity.
func (c *Checker) Check(ctx context.Context, id authn.Identity, ctr Container) (Result, error) {
	pod, err := c.callersPod(ctx, id, ctr)
	if err != nil {
		return Result{}, err
	}
	parsed := c.parse(pod)
	read := parsed.settings
	res := Result{Pod: pod, Settings: read.Settings, Warnings: read.Warnings}
	l, err := checkContainer(pod, parsed, read.Settings.EnforceIntegrity, ctr)
	if err != nil {
		return Result{}, err
	}
	if read.Denied != "" {
		return Result{}, fault.New(fault.InvalidArgument, "pod_settings", "pod %s/%s: %s", pod.Namespace, pod.Name, read.Denied)
	}
	if res.Grant, err = c.grant(pod, parsed, l); err != nil {
		return Result{}, err
	}
	if l != nil {
		res.ContainerName = l.name
		res.RestartCount = RestartCount(pod, l.name)
	}
	return res, nil
}

// RestartCount is the restartCount of container in pod's status (init
// containers included); 0 when the kubelet has reported none yet.
func RestartCount(pod *corev1.Pod, container string) int32 {
	for _, list := range [][]corev1.ContainerStatus{pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses} {
		for i := range list {
			if list[i].Name == container {
				return list[i].RestartCount
			}
		}
	}
	return 0
}

// Admitted returns what container of pod was admitted to read, refused as
// Check refuses it: not launched by Piggy, no readable grant, or settings
// changed since admission. It checks no caller (for diagnostics).
func (c *Checker) Admitted(pod *corev1.Pod, container string) (podgrant.Grant, error) {
	parsed := c.parse(pod)
	for i := range parsed.launched {
		if l := &parsed.launched[i]; l.name == container {
			return c.grant(pod, parsed, l)
		}
	}
	return podgrant.Grant{}, fault.New(fault.PermissionDenied, "container_uid_mismatch",
		"container %q of pod %s/%s was not launched by Piggy (it has no PIGGY_UID); its requests are refused", container, pod.Namespace, pod.Name)
}

// grant is what l (nil: any launched container) was admitted to read,
// refused when the pod's settings are no longer those of the grant.
func (c *Checker) grant(pod *corev1.Pod, parsed *parsedPod, l *launched) (podgrant.Grant, error) {
	g, err := admitted(pod, parsed, l)
	if err != nil {
		return podgrant.Grant{}, err
	}
	if diff := c.withDefaultRegion(g).SameSettings(parsed.current); diff != "" {
		return podgrant.Grant{}, fault.New(fault.PermissionDenied, "pod_settings_changed",
			"pod %s/%s: its settings differ from what was admitted (admitted %s now); settings cannot change after admission, recreate the pod", pod.Namespace, pod.Name, diff)
	}
	return g, nil
}

// serviceAccount is the pod's service account name ("default" when unset).
func serviceAccount(pod *corev1.Pod) string {
	if sa := pod.Spec.ServiceAccountName; sa != "" {
		return sa
	}
	return "default"
}

// withDefaultRegion fills in the broker's default region where g names
// none: the gateway may have admitted a pod with no region (the broker's
// default) that the broker, whose AWS_REGION is also the default of
// aws-region, reads as its own region.
func (c *Checker) withDefaultRegion(g podgrant.Grant) podgrant.Grant {
	if g.Source.Region == "" {
		g.Source.Region = c.defaults.Values[podsettings.AWSRegion]
	}
	return g
}

// checkContainer finds the launched container whose PIGGY_UID the request
// carries and checks the command signature; nil when integrity is not
// enforced and the UID matched nothing. Both comparisons run in constant
// time over every container, and empty values never match.
func checkContainer(pod *corev1.Pod, parsed *parsedPod, enforce bool, ctr Container) (*launched, error) {
	var match *launched
	sigOK := false
	if ctr.UID != "" {
		for i := range parsed.launched {
			l := &parsed.launched[i]
			if subtle.ConstantTimeCompare([]byte(l.uid), []byte(ctr.UID)) == 1 {
				match = l
				sigOK = ctr.Signature != "" && subtle.ConstantTimeCompare([]byte(l.signature), []byte(ctr.Signature)) == 1
			}
		}
	}
	if !enforce {
		return match, nil
	}
	switch {
	case ctr.UID == "":
		return nil, fault.New(fault.PermissionDenied, "container_uid_mismatch", "the request has no container UID (PIGGY_UID)")
	case match == nil:
		return nil, fault.New(fault.PermissionDenied, "container_uid_mismatch",
			"the container UID matches no container of pod %s/%s that Piggy launched", pod.Namespace, pod.Name)
	case ctr.Signature == "":
		return nil, fault.New(fault.PermissionDenied, "signature_mismatch", "the request has no command signature")
	case !sigOK:
		return nil, fault.New(fault.PermissionDenied, "signature_mismatch",
			"the command signature does not match container %q of pod %s/%s", match.name, pod.Namespace, pod.Name)
	}
	return match, nil
}

// admitted is the grant of container l or, without one, the union of the
// grants of the pod's launched containers, which must agree on the
// settings.
func admitted(pod *corev1.Pod, parsed *parsedPod, l *launched) (podgrant.Grant, error) {
	refuse := func(err error) (podgrant.Grant, error) {
		return podgrant.Grant{}, fault.Wrap(err, fault.PermissionDenied, "grant_missing", "%s", err.Error())
	}
	if l != nil {
		if l.grantErr != nil {
			return refuse(l.grantErr)
		}
		return l.grant, nil
	}
	if len(parsed.launched) == 0 {
		return refuse(fmt.Errorf("pod %s/%s has no container that Piggy launched", pod.Namespace, pod.Name))
	}
	var g podgrant.Grant
	for i, c := range parsed.launched {
		if c.grantErr != nil {
			return refuse(c.grantErr)
		}
		if i == 0 {
			g = c.grant
			continue
		}
		if diff := g.SameSettings(c.grant); diff != "" {
			return refuse(fmt.Errorf("the containers of pod %s/%s were admitted with different settings (%s)", pod.Namespace, pod.Name, diff))
		}
		g = g.Union(c.grant)
	}
	return g, nil
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
		if serviceAccount(p) == id.ServiceAccount {
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
