package devstack

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/piggysec/piggy/libs/kubetest"
	"github.com/piggysec/piggy/libs/podrun"
)

// The tests of this package run the whole chain on one stack: the real
// kube-apiserver, registry, AWS-compatible endpoint, the three service
// binaries, and pods' containers run through piggy-env as a kubelet would.

var (
	stack    *Stack
	stackOut bytes.Buffer
)

func TestMain(m *testing.M) {
	flagShort := false
	for _, a := range os.Args {
		if a == "-test.short=true" || a == "-test.short" {
			flagShort = true
		}
	}
	if flagShort {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "piggy-devstack-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	root, _ := filepath.Abs("../..")
	kube := kubetest.DefaultOptions(os.Getenv)
	kube.Progress = os.Stderr
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	stack, err = Start(ctx, Options{Dir: dir, RepoRoot: root, Kube: kube, Out: &stackOut})
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "devstack: start: %v\n%s", err, stackOut.String())
		os.Exit(1)
	}
	code := m.Run()
	if err := stack.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "devstack: stop: %v\n", err)
		code = 1
	}
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func needStack(t *testing.T) *Stack {
	t.Helper()
	if stack == nil {
		t.Skip("the local stack needs a real kube-apiserver; skipped with -short")
	}
	return stack
}

// TestDemo runs `make dev`'s demo: a pod without command created through
// the API, mutated, run through piggy-env against the broker.
func TestDemo(t *testing.T) {
	s := needStack(t)
	res, err := s.Demo(t.Context())
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, stackOut.String())
	}
	for k, want := range DemoValues {
		if res.Env[k] != want {
			t.Errorf("app saw %s=%q, want %q", k, res.Env[k], want)
		}
	}
	if len(res.Leaked) != 0 {
		t.Errorf("PIGGY_* leaked to the app: %v", res.Leaked)
	}
	if got := strings.Join(res.Args, " "); got != "--greeting hello from the image CMD" {
		t.Errorf("app args = %q, want the image CMD", got)
	}
	var usage bytes.Buffer
	s.PrintUsage(&usage, "grpcurl")
	for _, want := range []string{"export KUBECONFIG=", "grpc.health.v1.Health/Check", "SecretBrokerService/ExplainAccess", "AdmissionGatewayService/ExplainPod"} {
		if !strings.Contains(usage.String(), want) {
			t.Errorf("usage lacks %q", want)
		}
	}
}

// runPod creates pod (mutated), installs piggy-env and runs container app;
// it returns the exit code, what the app saw (nil if it did not start) and
// piggy-env's stderr. tweak may change the runner or the process before
// it starts (replays).
func runPod(t *testing.T, s *Stack, pod *corev1.Pod, tweak func(r *podrun.Runner, p *corev1.Pod)) (int, map[string]string, string) {
	t.Helper()
	ctx := t.Context()
	cs := s.Cluster.Clientset()
	created, err := s.createMutated(ctx, cs, pod)
	if err != nil {
		t.Fatal(err)
	}
	deleteAtCleanup(t, cs, created)
	var stdout, stderr bytes.Buffer
	r := &podrun.Runner{
		Client: cs, Pod: created, Root: t.TempDir(),
		Images: map[string]string{PiggyEnvImage: filepath.Join(s.BinDir, "piggy-env")},
		Path:   s.BinDir + ":/usr/bin:/bin", Stdout: &stdout, Stderr: &stderr,
	}
	if res, err := r.Run(ctx, "install-piggy-env"); err != nil || res.ExitCode != 0 {
		t.Fatalf("install: %v %d: %s", err, res.ExitCode, stderr.String())
	}
	if tweak != nil {
		tweak(r, created)
	}
	res, err := r.Run(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	var seen struct {
		Env map[string]string `json:"env"`
	}
	if stdout.Len() > 0 {
		if err := json.Unmarshal(stdout.Bytes(), &seen); err != nil {
			t.Fatalf("app output: %v: %s", err, stdout.String())
		}
	}
	return res.ExitCode, seen.Env, stderr.String()
}

// deleteAtCleanup deletes pod when the test ends, so its name is free for
// the next run (go test -count).
func deleteAtCleanup(t *testing.T, cs kubernetes.Interface, pod *corev1.Pod) {
	t.Cleanup(func() {
		err := cs.CoreV1().Pods(pod.Namespace).Delete(context.Background(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete pod %s/%s: %v", pod.Namespace, pod.Name, err)
		}
	})
}

func demoPod(s *Stack, name string, annotations map[string]string, command []string, env ...corev1.EnvVar) *corev1.Pod {
	p := s.DemoPod(name)
	p.Annotations = annotations
	p.Spec.Containers[0].Command = command
	p.Spec.Containers[0].Env = append(p.Spec.Containers[0].Env, env...)
	return p
}

func TestSSMThroughTheBroker(t *testing.T) {
	s := needStack(t)
	if s.opts.RealAWS {
		t.Skip("seeded values only exist on the local endpoint")
	}
	code, env, stderr := runPod(t, s, demoPod(s, "ssm", map[string]string{"piggysec.com/aws-ssm-parameter-path": DemoSSMPath}, nil), nil)
	if code != 0 || env["DB_PASSWORD"] != "demo-ssm-db-password" || env["API_TOKEN"] != "demo-ssm-api-token" {
		t.Fatalf("exit %d, env DB_PASSWORD=%q API_TOKEN=%q; stderr:\n%s", code, env["DB_PASSWORD"], env["API_TOKEN"], stderr)
	}
}

// TestStandalone: piggy-env reads Secrets Manager itself with the pod's own
// IRSA role (web identity token projected for sts.amazonaws.com).
func TestStandalone(t *testing.T) {
	s := needStack(t)
	if s.opts.RealAWS {
		t.Skip("the demo role only exists on the local endpoint")
	}
	p := demoPod(s, "standalone", map[string]string{
		"piggysec.com/standalone":      "true",
		"piggysec.com/aws-secret-name": DemoSecretName,
		"piggysec.com/aws-region":      s.opts.Region,
	}, []string{"piggy-demo-app", "--mode", "standalone"},
		corev1.EnvVar{Name: "AWS_ROLE_ARN", Value: DemoAppRole},
		corev1.EnvVar{Name: "AWS_WEB_IDENTITY_TOKEN_FILE", Value: "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"},
		corev1.EnvVar{Name: "AWS_ENDPOINT_URL", Value: s.AWSURL},
		corev1.EnvVar{Name: "AWS_ENDPOINT_URL_STS", Value: s.AWSURL},
		corev1.EnvVar{Name: "AWS_CA_BUNDLE", Value: filepath.Join(s.CertDir, "ca.crt")},
	)
	exp := int64(3600)
	p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "aws-iam-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: stsAudience, ExpirationSeconds: &exp, Path: "token"}}},
	}}})
	p.Spec.Containers[0].VolumeMounts = append(p.Spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: "aws-iam-token", MountPath: "/var/run/secrets/eks.amazonaws.com/serviceaccount", ReadOnly: true})
	stsBefore := s.AWS.Calls("sts", "")
	code, env, stderr := runPod(t, s, p, nil)
	if code != 0 || env["DB_PASSWORD"] != DemoValues["DB_PASSWORD"] || env["API_TOKEN"] != DemoValues["API_TOKEN"] {
		t.Fatalf("exit %d, env %v; stderr:\n%s", code, env, stderr)
	}
	if leaked := keysWithPrefix(env, "PIGGY_"); len(leaked) > 0 {
		t.Errorf("PIGGY_* leaked: %v", leaked)
	}
	if s.AWS.Calls("sts", "") <= stsBefore {
		t.Error("standalone piggy-env did not assume its role through STS")
	}
}

// TestReplayWithAnotherCommandIsRefused is what `kubectl exec pod --
// /piggy/piggy-env -- sh` would do: same pod, same token, another command
// line. The broker refuses it, so no value reaches the command.
func TestReplayWithAnotherCommandIsRefused(t *testing.T) {
	s := needStack(t)
	code, env, stderr := runPod(t, s, demoPod(s, "replay", map[string]string{"piggysec.com/aws-secret-name": DemoSecretName}, []string{"piggy-demo-app"}),
		func(r *podrun.Runner, p *corev1.Pod) {
			c := &p.Spec.Containers[0]
			c.Args = []string{"--", "piggy-demo-app", "--dump-everything"}
		})
	if code == 0 || env != nil {
		t.Fatalf("replayed command ran (exit %d, env %v); stderr:\n%s", code, env, stderr)
	}
	assertNoDemoValue(t, stderr)
	if !strings.Contains(stderr, "HTTP 403") || !strings.Contains(stderr, "the command signature does not match") {
		t.Errorf("piggy-env does not say the broker refused the signature: %s", stderr)
	}
}

// TestTokenOfAnotherPodGetsNothing runs pod A's container with a token
// bound to pod B (same namespace and service account).
func TestTokenOfAnotherPodGetsNothing(t *testing.T) {
	s := needStack(t)
	ctx := t.Context()
	cs := s.Cluster.Clientset()
	other, err := s.createMutated(ctx, cs, demoPod(s, "other", map[string]string{"piggysec.com/aws-secret-name": DemoSecretName}, []string{"piggy-demo-app"}))
	if err != nil {
		t.Fatal(err)
	}
	deleteAtCleanup(t, cs, other)
	otherToken, err := kubetest.RequestPodToken(ctx, cs, other, "piggy")
	if err != nil {
		t.Fatal(err)
	}
	code, env, stderr := runPod(t, s, demoPod(s, "victim", map[string]string{"piggysec.com/aws-secret-name": DemoSecretName}, []string{"piggy-demo-app"}),
		func(r *podrun.Runner, p *corev1.Pod) {
			// podrun writes the pod's own token when the container starts;
			// replace the projection with a pre-written foreign token.
			c := &p.Spec.Containers[0]
			for i, m := range c.VolumeMounts {
				if m.Name == "piggy-token" {
					c.VolumeMounts[i].Name = "foreign-token"
				}
			}
			p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "foreign-token", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
			dir := filepath.Join(r.Root, "volumes", "foreign-token")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "token"), []byte(otherToken), 0o600); err != nil {
				t.Fatal(err)
			}
		})
	if code == 0 || env != nil {
		t.Fatalf("container ran with another pod's token (exit %d); stderr:\n%s", code, stderr)
	}
	assertNoDemoValue(t, stderr)
	if !strings.Contains(stderr, "HTTP 403") || !strings.Contains(stderr, "matches no container of pod "+DemoNamespace+"/other") {
		t.Errorf("piggy-env does not say the broker refused the foreign token: %s", stderr)
	}
}

func assertNoDemoValue(t *testing.T, s string) {
	t.Helper()
	for _, v := range DemoValues {
		if strings.Contains(s, v) {
			t.Errorf("a secret value appears in: %s", s)
		}
	}
}

func keysWithPrefix(env map[string]string, prefix string) []string {
	var out []string
	for k := range env {
		if strings.HasPrefix(k, prefix) {
			out = append(out, k)
		}
	}
	return out
}
