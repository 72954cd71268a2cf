package mutate

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"

	"github.com/piggysec/piggy/libs/podidentity"
	"github.com/piggysec/piggy/libs/podsettings"
)

// recreate ends the messages about a pod that carries Piggy's additions
// without being what Piggy made of it (typically a copy of a mutated pod
// that was changed).
const recreate = "; create the pod from its own spec, without what Piggy added"

// checkReserved refuses a pod that uses a name Piggy reserves for what it
// adds, unless the thing is exactly what this webhook adds, so that an
// earlier invocation's output passes through (re-invocation, or a mutated
// pod created again) and nothing else is mistaken for it. It returns the
// denial message, which names only the pod's own objects, or "".
//
// The rules, for every pod the webhook sees (whether or not it references
// piggy: values: a pod with none gains nothing from these names, and
// refusing them keeps the rules simple):
//
//   - A volume named piggy-env must be the launcher volume and one named
//     piggy-token the projected token volume, both exactly as New builds
//     them (medium, size, audience, expiration, path, mode).
//   - An init container named install-piggy-env must be the install
//     container installContainer builds for the pod's settings, allowing
//     only for what the API server and other admission add to every
//     container (see sameInstallContainer). No other container may take
//     that name.
//   - Without Piggy's install container the pod has not been mutated by
//     Piggy: a piggysec.com/piggy-uid annotation, a PIGGY_UID env var and
//     a container that already starts /piggy/piggy-env are refused (the
//     latter would keep its own PIGGY_* settings, broker address included).
//   - With it, the identities must be exactly what Piggy wrote: every
//     container that starts through piggy-env has one annotation entry,
//     whose UID is its single PIGGY_UID and whose signature is that of its
//     command line (proxy mode; standalone mode writes neither), no entry
//     names another container, no other container sets PIGGY_UID, and each
//     launched container still has the env and mounts launch gave it (the
//     last definition of each PIGGY_* variable Piggy set is Piggy's).
//
// The webhook is stateless, so a pod written to look exactly like its
// output passes as such: its identities are then ones its creator chose,
// but they can read them from the pod anyway, and the broker takes the pod
// from the token review, so a chosen UID names nothing of another pod.
func (m *Mutator) checkReserved(pod *corev1.Pod, s podsettings.Settings) string {
	for _, v := range pod.Spec.Volumes {
		want := m.launcherVol
		switch v.Name {
		case LauncherVolumeName:
		case TokenVolumeName:
			want = m.tokenVol
		default:
			continue
		}
		if !equality.Semantic.DeepEqual(want, v) {
			return fmt.Sprintf("piggy: volume %q is reserved for Piggy; rename your volume", v.Name)
		}
	}
	proxy := !s.Standalone
	mutated := false
	for _, c := range pod.Spec.InitContainers {
		if c.Name != InstallContainerName {
			continue
		}
		if !sameInstallContainer(installContainer(s, m.cfg, m.brokerCABundle(), proxy), c) {
			return fmt.Sprintf("piggy: init container %q is reserved for Piggy; rename your container", c.Name)
		}
		mutated = true
	}
	if slices.ContainsFunc(pod.Spec.Containers, func(c corev1.Container) bool { return c.Name == InstallContainerName }) {
		return fmt.Sprintf("piggy: container name %q is reserved for Piggy; rename your container", InstallContainerName)
	}

	raw, annotated := pod.Annotations[podidentity.AnnotationKey]
	if !mutated || !proxy {
		if annotated {
			return fmt.Sprintf("piggy: annotation %s is written by Piggy; remove it", podidentity.AnnotationKey)
		}
	}
	var ids podidentity.Identities
	if mutated && proxy {
		var err error
		if ids, err = podidentity.Parse(raw); err != nil {
			return fmt.Sprintf("piggy: annotation %s is not what Piggy wrote%s", podidentity.AnnotationKey, recreate)
		}
	}
	launched := map[string]bool{}
	for _, group := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range group {
			c := &group[i]
			if c.Name == InstallContainerName {
				continue
			}
			if msg := m.checkContainer(c, s, mutated, ids); msg != "" {
				return msg
			}
			launched[c.Name] = isLaunched(c)
		}
	}
	for _, name := range sortedKeys(ids) {
		if !launched[name] {
			return fmt.Sprintf("piggy: annotation %s has an identity for container %q, which Piggy did not launch%s", podidentity.AnnotationKey, name, recreate)
		}
	}
	return ""
}

// checkContainer applies checkReserved's rules to one container other
// than the install container; ids are the pod's identities when Piggy
// mutated it in proxy mode.
func (m *Mutator) checkContainer(c *corev1.Container, s podsettings.Settings, mutated bool, ids podidentity.Identities) string {
	uids := 0
	for _, e := range c.Env {
		if e.Name == "PIGGY_UID" {
			uids++
		}
	}
	starts := len(c.Command) > 0 && c.Command[0] == LauncherPath
	if starts && (!mutated || !isLaunched(c)) {
		return fmt.Sprintf("piggy: container %q already starts through %s, which only Piggy sets up; give it its own command", c.Name, LauncherPath)
	}
	if !mutated || !isLaunched(c) {
		if uids > 0 {
			return fmt.Sprintf("piggy: container %q sets PIGGY_UID, which is reserved for Piggy; remove it", c.Name)
		}
		return ""
	}
	uid := ""
	if !s.Standalone {
		entry, ok := ids[c.Name]
		if !ok || entry.UID == "" || uids != 1 || envValue(c, "PIGGY_UID") != entry.UID ||
			entry.Signature != podidentity.Signature(c.Args[1:]) {
			return fmt.Sprintf("piggy: annotation %s does not match what Piggy set for container %q%s", podidentity.AnnotationKey, c.Name, recreate)
		}
		uid = entry.UID
	} else if uids > 0 {
		return fmt.Sprintf("piggy: container %q sets PIGGY_UID, which is reserved for Piggy; remove it", c.Name)
	}
	for _, want := range m.launcherEnv(s, uid) {
		if got, ok := lastEnv(c, want.Name); !ok || got.ValueFrom != nil || got.Value != want.Value {
			return fmt.Sprintf("piggy: container %q starts through %s but %s is not what Piggy set%s", c.Name, LauncherPath, want.Name, recreate)
		}
	}
	for _, want := range launcherMounts(s) {
		if !slices.ContainsFunc(c.VolumeMounts, func(got corev1.VolumeMount) bool { return equality.Semantic.DeepEqual(want, got) }) {
			return fmt.Sprintf("piggy: container %q starts through %s but does not mount volume %q as Piggy set it%s", c.Name, LauncherPath, want.Name, recreate)
		}
	}
	return ""
}

// isLaunched reports whether c starts through piggy-env the way launch
// sets it up.
func isLaunched(c *corev1.Container) bool {
	return len(c.Command) == 1 && c.Command[0] == LauncherPath && len(c.Args) > 0 && c.Args[0] == "--"
}

// lastEnv returns the definition of name that takes effect (the last).
func lastEnv(c *corev1.Container, name string) (corev1.EnvVar, bool) {
	for i := len(c.Env) - 1; i >= 0; i-- {
		if c.Env[i].Name == name {
			return c.Env[i], true
		}
	}
	return corev1.EnvVar{}, false
}

// sameInstallContainer reports whether got is want, the install container
// this webhook builds, as the API server and other admission may leave it
// between invocations:
//   - the API server's defaults (terminationMessagePath, imagePullPolicy);
//   - env vars not named PIGGY_* and volume mounts of other volumes
//     outside the launcher and token directories, which admission adds to
//     every container (the service account token and the API server's
//     CA, IRSA's web identity token and AWS_* env);
//   - requests and limits of resources other than CPU and memory
//     (LimitRanger's defaults).
//
// None of these changes what the container writes into the launcher
// volume short of replacing the image's own files, which the pod creator
// can do anyway by choosing piggysec.com/piggy-env-image.
func sameInstallContainer(want, got corev1.Container) bool {
	got = *got.DeepCopy()
	if got.TerminationMessagePath == corev1.TerminationMessagePathDefault && want.TerminationMessagePath == "" {
		got.TerminationMessagePath = ""
	}
	if want.ImagePullPolicy == "" && (got.ImagePullPolicy == corev1.PullAlways || got.ImagePullPolicy == corev1.PullIfNotPresent) {
		got.ImagePullPolicy = ""
	}
	got.Env = slices.DeleteFunc(got.Env, func(e corev1.EnvVar) bool { return !strings.HasPrefix(e.Name, "PIGGY_") })
	got.VolumeMounts = slices.DeleteFunc(got.VolumeMounts, func(vm corev1.VolumeMount) bool {
		return vm.Name != LauncherVolumeName && vm.Name != TokenVolumeName && !under(vm.MountPath, LauncherDir) && !under(vm.MountPath, TokenDir)
	})
	for _, list := range []corev1.ResourceList{got.Resources.Requests, got.Resources.Limits} {
		for name := range list {
			if name != corev1.ResourceCPU && name != corev1.ResourceMemory {
				delete(list, name)
			}
		}
	}
	return equality.Semantic.DeepEqual(want, got)
}

// under reports whether path is dir or inside it.
func under(path, dir string) bool {
	path = strings.TrimRight(path, "/")
	return path == dir || strings.HasPrefix(path, dir+"/")
}

// launcherMounts are the mounts launch gives a container.
func launcherMounts(s podsettings.Settings) []corev1.VolumeMount {
	mounts := []corev1.VolumeMount{{Name: LauncherVolumeName, MountPath: LauncherDir, ReadOnly: true}}
	if !s.Standalone {
		mounts = append(mounts, corev1.VolumeMount{Name: TokenVolumeName, MountPath: TokenDir, ReadOnly: true})
	}
	return mounts
}

func sortedKeys(ids podidentity.Identities) []string {
	keys := make([]string, 0, len(ids))
	for k := range ids {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
