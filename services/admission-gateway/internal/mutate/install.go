package mutate

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/piggysec/piggy/libs/podsettings"
)

// installContainer is the init container that copies piggy-env (and the
// broker CA) into the launcher volume. It satisfies the "restricted" Pod
// Security Standard unless the pod asks for privilege escalation.
func installContainer(s podsettings.Settings, cfg Config, proxy bool) corev1.Container {
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
	if proxy && cfg.BrokerCABundle != "" {
		c.Env = []corev1.EnvVar{{Name: "PIGGY_CA_BUNDLE", Value: cfg.BrokerCABundle}}
	}
	return c
}

func resourceMustParse(s string) resource.Quantity { return resource.MustParse(s) }
