package devstack

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/piggysec/piggy/libs/podidentity"
	"github.com/piggysec/piggy/libs/podrun"
)

// DemoResult is what the demo application saw.
type DemoResult struct {
	// Pod is the mutated, persisted pod.
	Pod *corev1.Pod
	// Env is the application's environment.
	Env map[string]string
	// Args are the application's arguments.
	Args []string
	// Leaked lists PIGGY_* variables the application saw (must be empty).
	Leaked []string
}

// DemoPod is the demo's pod: no command (the image's ENTRYPOINT/CMD is
// read from the registry) and two piggy: references.
func (s *Stack) DemoPod(name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: DemoNamespace, Name: name, Annotations: map[string]string{
			"piggysec.com/aws-secret-name": DemoSecretName,
		}},
		Spec: corev1.PodSpec{
			ServiceAccountName: DemoServiceAccount,
			Containers: []corev1.Container{{
				Name:  "app",
				Image: s.DemoImage(),
				Env: []corev1.EnvVar{
					{Name: "DB_PASSWORD", Value: "piggy:DB_PASSWORD"},
					{Name: "API_TOKEN", Value: "piggy:API_TOKEN"},
					{Name: "GREETING", Value: "plain values stay as they are"},
					{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
				},
			}},
		},
	}
}

// Demo creates the demo pod through the API, shows what the mutation
// changed, runs the pod's init and app containers locally as a kubelet
// would, and checks what the application saw.
func (s *Stack) Demo(ctx context.Context) (*DemoResult, error) {
	out := s.opts.Out
	rc := s.Cluster.RESTConfig()
	rc.WarningHandlerWithContext = warningPrinter{out}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	fmt.Fprintln(out, "\nDemo")

	t := time.Now()
	// The API server names the pod (as for a Deployment's pods), so every
	// run of the demo gets a new one.
	demo := s.DemoPod("")
	demo.GenerateName = "demo-app-"
	pod, err := s.createMutated(ctx, cs, demo)
	if err != nil {
		return nil, fmt.Errorf("create the demo pod: %w", err)
	}
	s.demoPod = pod.Name
	s.step(t, "created pod %s/%s through the API", pod.Namespace, pod.Name)
	s.summarize(pod)

	t = time.Now()
	root := filepath.Join(s.opts.Dir, "pods", pod.Name)
	var stdout, stderr bytes.Buffer
	r := &podrun.Runner{
		Client: cs, Pod: pod, Root: root,
		Images: map[string]string{PiggyEnvImage: filepath.Join(s.BinDir, "piggy-env")},
		Path:   s.BinDir + string(os.PathListSeparator) + "/usr/bin:/bin",
		Stdout: &stdout, Stderr: io.MultiWriter(&stderr, prefixWriter(out, "      piggy-env │ ")),
	}
	if res, err := r.Run(ctx, "install-piggy-env"); err != nil || res.ExitCode != 0 {
		return nil, fmt.Errorf("install-piggy-env: exit %d, %v: %s", res.ExitCode, err, stderr.String())
	}
	s.step(t, "ran init container install-piggy-env (piggy-env install /piggy)")

	t = time.Now()
	res, err := r.Run(ctx, "app")
	if err != nil || res.ExitCode != 0 {
		return nil, fmt.Errorf("app container: exit %d, %v: %s", res.ExitCode, err, stderr.String())
	}
	s.step(t, "ran container app: piggy-env fetched from the broker and exec'd")

	var seen struct {
		Args []string          `json:"args"`
		Env  map[string]string `json:"env"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &seen); err != nil {
		return nil, fmt.Errorf("demo app output: %w: %s", err, stdout.String())
	}
	result := &DemoResult{Pod: pod, Env: seen.Env, Args: seen.Args}
	for k := range seen.Env {
		if strings.HasPrefix(k, "PIGGY_") {
			result.Leaked = append(result.Leaked, k)
		}
	}
	sort.Strings(result.Leaked)
	fmt.Fprintf(out, "    the application saw (args %q):\n", seen.Args)
	for _, k := range []string{"DB_PASSWORD", "API_TOKEN", "GREETING", "POD_NAME"} {
		fmt.Fprintf(out, "      %-12s = %s\n", k, seen.Env[k])
	}
	fmt.Fprintf(out, "      PIGGY_* variables visible to the app: %d\n", len(result.Leaked))
	if !s.opts.RealAWS {
		for k, want := range DemoValues {
			if seen.Env[k] != want {
				return result, fmt.Errorf("the application saw %s=%q, want the demo value", k, seen.Env[k])
			}
		}
	}
	if len(result.Leaked) > 0 {
		return result, fmt.Errorf("PIGGY_* variables leaked to the application: %v", result.Leaked)
	}
	return result, nil
}

// createMutated creates pod and retries briefly until the freshly
// registered webhook is active.
func (s *Stack) createMutated(ctx context.Context, cs kubernetes.Interface, pod *corev1.Pod) (*corev1.Pod, error) {
	pods := cs.CoreV1().Pods(pod.Namespace)
	deadline := time.Now().Add(15 * time.Second)
	for {
		got, err := pods.Create(ctx, pod.DeepCopy(), metav1.CreateOptions{})
		if err != nil {
			return nil, err
		}
		if len(got.Spec.InitContainers) > 0 && got.Spec.InitContainers[0].Name == "install-piggy-env" {
			return got, nil
		}
		_ = pods.Delete(ctx, got.Name, metav1.DeleteOptions{})
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("pod %s was not mutated: is the webhook reachable? see %s", pod.Name, filepath.Join(s.LogDir, "admission-gateway.log"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// summarize prints what the mutation changed.
func (s *Stack) summarize(p *corev1.Pod) {
	out := s.opts.Out
	c := p.Spec.Containers[0]
	fmt.Fprintf(out, "    mutation: init container %q first (image %s)\n", p.Spec.InitContainers[0].Name, p.Spec.InitContainers[0].Image)
	fmt.Fprintf(out, "    mutation: command %q, args %q (image ENTRYPOINT/CMD read from the registry)\n", c.Command, c.Args)
	var vols, envs []string
	for _, v := range p.Spec.Volumes {
		if strings.HasPrefix(v.Name, "piggy") {
			vols = append(vols, v.Name)
		}
	}
	for _, e := range c.Env {
		if strings.HasPrefix(e.Name, "PIGGY_") {
			envs = append(envs, e.Name)
		}
	}
	fmt.Fprintf(out, "    mutation: volumes %v; env %v\n", vols, envs)
	fmt.Fprintf(out, "    mutation: annotation %s=%s\n", podidentity.AnnotationKey, p.Annotations[podidentity.AnnotationKey])
}

// warningPrinter shows admission warnings as demo lines.
type warningPrinter struct{ w io.Writer }

func (p warningPrinter) HandleWarningHeaderWithContext(_ context.Context, _ int, _ string, text string) {
	fmt.Fprintf(p.w, "    warning from the API server: %s\n", text)
}

// prefixWriter prefixes every line written to w.
func prefixWriter(w io.Writer, prefix string) io.Writer {
	return &prefixed{w: w, prefix: prefix, start: true}
}

type prefixed struct {
	w      io.Writer
	prefix string
	start  bool
}

func (p *prefixed) Write(b []byte) (int, error) {
	var buf bytes.Buffer
	for _, c := range b {
		if p.start {
			buf.WriteString(p.prefix)
			p.start = false
		}
		buf.WriteByte(c)
		if c == '\n' {
			p.start = true
		}
	}
	if _, err := p.w.Write(buf.Bytes()); err != nil {
		return 0, err
	}
	return len(b), nil
}
