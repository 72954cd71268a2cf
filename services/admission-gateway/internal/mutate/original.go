package mutate

import (
	"encoding/json"
	"slices"

	corev1 "k8s.io/api/core/v1"

	"github.com/piggysec/piggy/libs/podgrant"
	"github.com/piggysec/piggy/libs/podidentity"
	"github.com/piggysec/piggy/libs/podsettings"
)

// Pods the original Piggy webhook (KongZ/piggy, chart piggy-webhooks 0.7.x,
// piggy-webhooks/mutate/pod.go) mutated carry its own piggy-uid annotation,
// a JSON object of container UID → command signature without container
// names ({"3f0c…":"9a1b…"}), an install-piggy-env init container, and
// containers started as /piggy/piggy-env -- <command> whose env has the
// original's PIGGY_AWS_SECRET_NAME and PIGGY_AWS_REGION, with PIGGY_UID
// (proxy mode) or PIGGY_STANDALONE.
//
// Such a pod reaches this webhook when both webhooks select its namespace
// and the original ran first, or when a pod is created again from the
// spec of one the original admitted. Mutating it again would launch
// piggy-env twice and overwrite the identities the original's launcher
// presents to the broker's legacy endpoint; refusing it would stop the
// gradual cut-over. It is admitted unchanged, with a warning.

// originalWarning is the admission warning for a pod the original webhook
// mutated.
const originalWarning = "piggy: this pod was mutated by the original Piggy webhook (piggy-webhooks): admitted unchanged; " +
	"its containers run the original piggy-env, which the secret-broker answers only with --legacy-secret-endpoint. " +
	"Select the namespace with one webhook only (see the migration guide) and recreate the pod from its own spec"

// mutatedByOriginal reports whether pod is the original webhook's output:
// a container starts through piggy-env with the original's env, next to
// an install container this webhook did not build, and the piggy-uid
// annotation, if any (a copy of the pod may have lost it), is in the
// original's format. Anything
// only this webhook adds (the piggy-token volume, PIGGY_GRANT or
// PIGGY_TOKEN_FILE in a container, this webhook's annotation format or
// install container) means it is not.
func (m *Mutator) mutatedByOriginal(pod *corev1.Pod, s podsettings.Settings) bool {
	if slices.ContainsFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == TokenVolumeName }) {
		return false
	}
	launched := false
	for _, group := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range group {
			c := &group[i]
			if c.Name == InstallContainerName {
				if sameInstallContainer(installContainer(s, m.cfg, m.brokerCABundle(), !s.Standalone), *c) {
					return false
				}
				continue
			}
			if hasEnvName(c, podgrant.EnvName) || hasEnvName(c, "PIGGY_TOKEN_FILE") {
				return false
			}
			if isLaunched(c) && hasEnvName(c, "PIGGY_AWS_SECRET_NAME") && hasEnvName(c, "PIGGY_AWS_REGION") &&
				(hasEnvName(c, "PIGGY_UID") || hasEnvName(c, "PIGGY_STANDALONE")) {
				launched = true
			}
		}
	}
	if !launched || !slices.ContainsFunc(pod.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == InstallContainerName }) {
		return false
	}
	if raw, ok := pod.Annotations[podidentity.AnnotationKey]; ok {
		return originalUIDs(raw)
	}
	return true
}

// originalUIDs reports whether a piggy-uid annotation is in the original
// webhook's format: a non-empty object of UID → signature strings. This
// webhook's format (container name → {uid, signature}) is not.
func originalUIDs(raw string) bool {
	var ids map[string]string
	if err := json.Unmarshal([]byte(raw), &ids); err != nil || len(ids) == 0 {
		return false
	}
	for uid, sig := range ids {
		if uid == "" || sig == "" {
			return false
		}
	}
	return true
}

// hasEnvName reports whether c defines the env var name.
func hasEnvName(c *corev1.Container, name string) bool {
	return slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == name })
}
