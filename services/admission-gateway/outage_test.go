package main

import (
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/piggysec/piggy/libs/proctest"
	"github.com/piggysec/piggy/libs/registrytest"
)

// TestRecoveryAfterResolverOutage is the faults issue's resolver outage:
// the image-resolver process stops for a while (reviews of pods without a
// command are denied meanwhile), then starts again on the same address.
// Pods without a command must be admitted again within 5 s of its return.
func TestRecoveryAfterResolverOutage(t *testing.T) {
	const outage = 8 * time.Second
	addr := registrytest.ClosedPort(t) // a free port for the resolver
	var resolver *proctest.Process
	startResolver := func(s *stack, caFile string) {
		resolver = proctest.Start(t, proctest.Build(t, "../image-resolver"), append(s.pki.TLSArgs(),
			"--grpc-address="+addr, "--metrics-address=127.0.0.1:0",
			"--kubeconfig", kube.Cluster(t).KubeconfigPath(), "--registry-ca-file", caFile, "--allow-internal-networks=127.0.0.0/8"), nil)
		resolver.Addresses(t, "grpc") // serving
	}
	s := startStack(t, "outage", addr)
	caFile := s.public.CAFile(t)
	startResolver(s, caFile)
	s.public.Push(t, "team/web:1", registrytest.Image(t, "linux/amd64", []string{"/bin/web"}, nil))
	pod := appPod("x", "web", map[string]string{"piggysec.com/aws-secret-name": "x"},
		corev1.Container{Name: "web", Image: s.public.Ref("team/web:1"), Env: env("A", "piggy:A")})
	if r := s.review(t, pod); !r.Allowed {
		t.Fatalf("before the outage: denied: %s", r.Result.Message)
	}

	if code, _ := resolver.Stop(t, syscall.SIGTERM, 10*time.Second); code != 0 {
		t.Fatalf("resolver exited %d", code)
	}
	for end := time.Now().Add(outage); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		if r := s.review(t, pod); r.Allowed {
			t.Fatal("admitted a pod without a command while the resolver was down")
		}
	}
	startResolver(s, caFile)
	back := time.Now()
	for {
		r := s.review(t, pod)
		if r.Allowed {
			break
		}
		if time.Since(back) > 5*time.Second {
			t.Fatalf("still denied %s after the resolver came back: %s", time.Since(back).Round(time.Millisecond), r.Result.Message)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("after a %s outage, admitted again %s after the resolver was back", outage, time.Since(back).Round(time.Millisecond))
}
