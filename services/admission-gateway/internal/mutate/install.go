package mutate

import (
	"encoding/json"

	corev1 "k8s.io/api/core/v1"

	"github.com/piggysec/piggy/libs/podsettings"
)

// installContainer is the init container that copies piggy-env (and the
// broker CA) into the launcher volume. It satisfies the "restricted" Pod
// Security Standard unless the pod asks for privilege escalation.
func installContainer(s podsettings.Settings, cfg Config, caBundle string, proxy bool) corev1.Container {
	image := s.EnvImage
	if image == "" {
		image = cfg.EnvImage
	}
	c := corev1.Container{
		Name:            InstallContainerName,
		Image:           image,
		ImagePullPolicy: corev1.PullPolicy(s.EnvImagePullPolicy),
		Args:            []string{"install", LauncherDir},
		VolumeMounts:    []corev1.VolumeMount{{Name: LauncherVolumeName, MountPath: LauncherDir}},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: s.Resources.CPURequest, corev1.ResourceMemory: s.Resources.MemoryRequest},
			Limits:   corev1.ResourceList{corev1.ResourceCPU: s.Resources.CPULimit, corev1.ResourceMemory: s.Resources.MemoryLimit},
		},
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr(true),
			RunAsUser:                cfg.InstallRunAsUser,
			AllowPrivilegeEscalation: ptr(s.AllowPrivilegeEscalation),
			ReadOnlyRootFilesystem:   ptr(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
	if proxy && caBundle != "" {
		c.Env = []corev1.EnvVar{{Name: "PIGGY_CA_BUNDLE", Value: caBundle}}
	}
	return c
}

// installKey is everything the install container depends on besides the
// Mutator's configuration.
type installKey struct {
	image, pullPolicy                                string
	cpuRequest, memoryRequest, cpuLimit, memoryLimit string
	allowPrivilegeEscalation, proxy                  bool
	caBundle                                         string
}

// installContainerJSON returns the encoded install container, encoding
// each distinct variant once.
// An encoding failure (impossible for these types) leaves the typed value
// in the patch, so that Marshal reports the error and the review is denied.
func (m *Mutator) installContainerJSON(s podsettings.Settings, proxy bool) any {
	k := installKey{
		image: s.EnvImage, pullPolicy: s.EnvImagePullPolicy,
		cpuRequest: s.Resources.CPURequest.String(), memoryRequest: s.Resources.MemoryRequest.String(),
		cpuLimit: s.Resources.CPULimit.String(), memoryLimit: s.Resources.MemoryLimit.String(),
		allowPrivilegeEscalation: s.AllowPrivilegeEscalation, proxy: proxy,
		caBundle: m.brokerCABundle(),
	}
	if v, ok := m.installContainers.Load(k); ok {
		return v.(json.RawMessage)
	}
	c := installContainer(s, m.cfg, k.caBundle, proxy)
	raw, err := json.Marshal(c)
	if err != nil {
		return c
	}
	b := json.RawMessage(raw)
	// Pods choose the image and resources, so the variants are bounded
	// here rather than by trust: past the cap, encode without caching.
	if m.installVariants.Add(1) <= maxInstallVariants {
		m.installContainers.Store(k, b)
	}
	return b
}

// maxInstallVariants bounds the install container cache.
const maxInstallVariants = 256
