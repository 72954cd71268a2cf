// Package podrun runs the containers of a persisted Pod as local processes,
// the way a kubelet would: volumes become host directories, projected
// service-account tokens are requested from the API (bound to the Pod),
// env values are resolved (literal values, downward API fields,
// ConfigMap/Secret keys, envFrom), and the container's command and args run
// with that environment. Mount paths in the command and in env values are
// mapped to the host directories, since there is no mount namespace.
//
// It exists so that tests and the local demo can run what Piggy's mutation
// produced exactly as a node would, without a kubelet or container runtime.
package podrun

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
)

// Runner runs containers of one Pod.
type Runner struct {
	// Client reads ConfigMaps/Secrets and requests tokens.
	Client kubernetes.Interface
	// Pod is the persisted (mutated) Pod.
	Pod *corev1.Pod
	// Root is the host directory holding the Pod's volumes.
	Root string
	// Images maps an image reference to the host executable standing in for
	// its entrypoint when a container has no command (for example the
	// piggy-env image of the install init container).
	Images map[string]string
	// Path is the PATH of the processes, standing in for the image's
	// filesystem.
	Path string
	// ExtraEnv is added to every process (for example AWS endpoints).
	ExtraEnv []string
	// Stdout and Stderr receive the processes' output.
	Stdout, Stderr io.Writer
}

// Result is the outcome of one container run.
type Result struct {
	// ExitCode of the process.
	ExitCode int
	// Took is the wall time from start to exit.
	Took time.Duration
}

// Container returns the container (or init container) named name.
func (r *Runner) Container(name string) (*corev1.Container, error) {
	for _, list := range [][]corev1.Container{r.Pod.Spec.InitContainers, r.Pod.Spec.Containers} {
		for i := range list {
			if list[i].Name == name {
				return &list[i], nil
			}
		}
	}
	return nil, fmt.Errorf("pod %s/%s has no container %q", r.Pod.Namespace, r.Pod.Name, name)
}

// Command builds the process of container name without starting it.
func (r *Runner) Command(ctx context.Context, name string) (*exec.Cmd, error) {
	c, err := r.Container(name)
	if err != nil {
		return nil, err
	}
	mounts, err := r.prepareVolumes(ctx, c)
	if err != nil {
		return nil, err
	}
	env, err := r.env(ctx, c, mounts)
	if err != nil {
		return nil, err
	}
	argv := slices.Concat(c.Command, c.Args)
	if len(c.Command) == 0 {
		entry, ok := r.Images[c.Image]
		if !ok {
			return nil, fmt.Errorf("container %q has no command and no local executable stands in for image %q", name, c.Image)
		}
		argv = append([]string{entry}, c.Args...)
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("container %q has nothing to run", name)
	}
	// Paths under mounts are mapped in the executable and the arguments.
	// Note that piggy-env signs the application's command line as it sees
	// it, so an application argument naming a mount path would sign
	// differently here than on a node.
	for i := range argv {
		argv[i] = mapPath(argv[i], mounts)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = r.Stdout, r.Stderr
	cmd.WaitDelay = 5 * time.Second
	return cmd, nil
}

// Run runs container name to completion. Like a kubelet, it reports the
// container's status in the Pod's status: running with a new container ID
// when it starts (restartCount one more than the last status's, when the
// container ran before), terminated with the exit code when it ends. Unlike
// a kubelet, it reports the start before the process starts, so readers of
// the status never see it late.
func (r *Runner) Run(ctx context.Context, name string) (Result, error) {
	cmd, err := r.Command(ctx, name)
	if err != nil {
		return Result{}, err
	}
	id := "podrun://" + rand.Text()
	start := time.Now()
	if err := r.reportStatus(ctx, name, func(st *corev1.ContainerStatus) {
		if st.ContainerID != "" {
			st.RestartCount++
			st.LastTerminationState = st.State
		}
		st.ContainerID, st.Started, st.Ready = id, ptr(true), true
		st.State = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(start)}}
	}); err != nil {
		return Result{}, err
	}
	err = cmd.Run()
	res := Result{Took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		res.ExitCode = ee.ExitCode()
	default:
		return res, fmt.Errorf("run container %q: %w", name, err)
	}
	if err := r.reportStatus(ctx, name, func(st *corev1.ContainerStatus) {
		st.Started, st.Ready = ptr(false), false
		st.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: int32(res.ExitCode), StartedAt: metav1.NewTime(start), FinishedAt: metav1.Now(), ContainerID: id,
		}}
	}); err != nil {
		return res, err
	}
	return res, nil
}

// reportStatus changes the status of container name in the Pod's status
// (a new one when it has none) through the status subresource.
func (r *Runner) reportStatus(ctx context.Context, name string, change func(*corev1.ContainerStatus)) error {
	c, err := r.Container(name)
	if err != nil {
		return err
	}
	init := slices.ContainsFunc(r.Pod.Spec.InitContainers, func(ic corev1.Container) bool { return ic.Name == name })
	pods := r.Client.CoreV1().Pods(r.Pod.Namespace)
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		pod, err := pods.Get(ctx, r.Pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if pod.UID != r.Pod.UID {
			return fmt.Errorf("pod %s/%s was recreated", r.Pod.Namespace, r.Pod.Name)
		}
		list := &pod.Status.ContainerStatuses
		if init {
			list = &pod.Status.InitContainerStatuses
		}
		i := slices.IndexFunc(*list, func(st corev1.ContainerStatus) bool { return st.Name == name })
		if i < 0 {
			*list = append(*list, corev1.ContainerStatus{Name: name, Image: c.Image, ImageID: c.Image})
			i = len(*list) - 1
		}
		change(&(*list)[i])
		if !init && (pod.Status.Phase == "" || pod.Status.Phase == corev1.PodPending) {
			pod.Status.Phase = corev1.PodRunning
		}
		_, err = pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("report the status of container %q: %w", name, err)
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

// mount is a container mount mapped to a host directory.
type mount struct{ path, host string }

// prepareVolumes creates the host side of every volume c mounts and
// returns the mappings, longest mount path first.
func (r *Runner) prepareVolumes(ctx context.Context, c *corev1.Container) ([]mount, error) {
	var mounts []mount
	for _, vm := range c.VolumeMounts {
		var vol *corev1.Volume
		for i := range r.Pod.Spec.Volumes {
			if r.Pod.Spec.Volumes[i].Name == vm.Name {
				vol = &r.Pod.Spec.Volumes[i]
			}
		}
		if vol == nil {
			return nil, fmt.Errorf("container %q mounts unknown volume %q", c.Name, vm.Name)
		}
		host := filepath.Join(r.Root, "volumes", vol.Name)
		if err := os.MkdirAll(host, 0o755); err != nil {
			return nil, err
		}
		if vol.Projected != nil {
			for _, src := range vol.Projected.Sources {
				if t := src.ServiceAccountToken; t != nil {
					if err := r.writeToken(ctx, host, t); err != nil {
						return nil, err
					}
				}
			}
		}
		mounts = append(mounts, mount{path: vm.MountPath, host: filepath.Join(host, vm.SubPath)})
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].path) > len(mounts[j].path) })
	return mounts, nil
}

// writeToken requests a token bound to the Pod, as the kubelet does for a
// projected serviceAccountToken source.
func (r *Runner) writeToken(ctx context.Context, dir string, src *corev1.ServiceAccountTokenProjection) error {
	sa := r.Pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: src.ExpirationSeconds,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: r.Pod.Name, UID: r.Pod.UID},
	}}
	if src.Audience != "" {
		req.Spec.Audiences = []string{src.Audience}
	}
	tr, err := r.Client.CoreV1().ServiceAccounts(r.Pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("request token for %s/%s: %w", r.Pod.Namespace, sa, err)
	}
	return os.WriteFile(filepath.Join(dir, src.Path), []byte(tr.Status.Token), 0o600)
}

// env resolves c's environment like the kubelet: envFrom first, then env
// in order (later definitions win), downward API fields from the Pod.
func (r *Runner) env(ctx context.Context, c *corev1.Container, mounts []mount) ([]string, error) {
	vals := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := vals[k]; !ok {
			order = append(order, k)
		}
		vals[k] = v
	}
	ns := r.Pod.Namespace
	for _, from := range c.EnvFrom {
		switch {
		case from.ConfigMapRef != nil:
			cm, err := r.Client.CoreV1().ConfigMaps(ns).Get(ctx, from.ConfigMapRef.Name, metav1.GetOptions{})
			if err != nil {
				if optional(from.ConfigMapRef.Optional) {
					continue
				}
				return nil, err
			}
			for k, v := range cm.Data {
				set(from.Prefix+k, v)
			}
		case from.SecretRef != nil:
			s, err := r.Client.CoreV1().Secrets(ns).Get(ctx, from.SecretRef.Name, metav1.GetOptions{})
			if err != nil {
				if optional(from.SecretRef.Optional) {
					continue
				}
				return nil, err
			}
			for k, v := range s.Data {
				set(from.Prefix+k, string(v))
			}
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			set(e.Name, e.Value)
			continue
		}
		v, ok, err := r.valueFrom(ctx, e.ValueFrom)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		if ok {
			set(e.Name, v)
		}
	}
	out := []string{"PATH=" + r.Path, "HOME=" + r.Root}
	out = append(out, r.ExtraEnv...)
	for _, k := range order {
		out = append(out, k+"="+mapPath(vals[k], mounts))
	}
	return out, nil
}

func (r *Runner) valueFrom(ctx context.Context, src *corev1.EnvVarSource) (string, bool, error) {
	ns := r.Pod.Namespace
	switch {
	case src.FieldRef != nil:
		switch src.FieldRef.FieldPath {
		case "metadata.name":
			return r.Pod.Name, true, nil
		case "metadata.namespace":
			return ns, true, nil
		case "metadata.uid":
			return string(r.Pod.UID), true, nil
		case "spec.serviceAccountName":
			return r.Pod.Spec.ServiceAccountName, true, nil
		case "spec.nodeName":
			return "local", true, nil
		case "status.podIP", "status.hostIP":
			return "127.0.0.1", true, nil
		}
		if k, ok := strings.CutPrefix(src.FieldRef.FieldPath, "metadata.annotations['"); ok {
			return r.Pod.Annotations[strings.TrimSuffix(k, "']")], true, nil
		}
		if k, ok := strings.CutPrefix(src.FieldRef.FieldPath, "metadata.labels['"); ok {
			return r.Pod.Labels[strings.TrimSuffix(k, "']")], true, nil
		}
		return "", false, fmt.Errorf("unsupported field %q", src.FieldRef.FieldPath)
	case src.ConfigMapKeyRef != nil:
		cm, err := r.Client.CoreV1().ConfigMaps(ns).Get(ctx, src.ConfigMapKeyRef.Name, metav1.GetOptions{})
		if err != nil {
			if optional(src.ConfigMapKeyRef.Optional) {
				return "", false, nil
			}
			return "", false, err
		}
		v, ok := cm.Data[src.ConfigMapKeyRef.Key]
		return v, ok, nil
	case src.SecretKeyRef != nil:
		s, err := r.Client.CoreV1().Secrets(ns).Get(ctx, src.SecretKeyRef.Name, metav1.GetOptions{})
		if err != nil {
			if optional(src.SecretKeyRef.Optional) {
				return "", false, nil
			}
			return "", false, err
		}
		v, ok := s.Data[src.SecretKeyRef.Key]
		return string(v), ok, nil
	}
	return "", false, errors.New("unsupported env source")
}

func optional(b *bool) bool { return b != nil && *b }

// mapPath maps a path under a mount to the mount's host directory.
func mapPath(p string, mounts []mount) string {
	for _, m := range mounts {
		if p == m.path {
			return m.host
		}
		if rest, ok := strings.CutPrefix(p, strings.TrimSuffix(m.path, "/")+"/"); ok {
			return filepath.Join(m.host, rest)
		}
	}
	return p
}
