package main

import (
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/piggysec/piggy/libs/proctest"
	"github.com/piggysec/piggy/libs/registrytest"
)

// TestBrokerAddressAllowlist is the admission issue's allowlist attack,
// through the real apiserver: with the broker's namespace allowed by a
// wildcard, a pod must not point piggy-env (and its pod-bound token) at a
// host that merely starts like an allowed one, or hides behind user
// information. An entry that is a raw string prefix (the old syntax that
// allowed both) is refused at start.
func TestBrokerAddressAllowlist(t *testing.T) {
	s := startStack(t, "allowlist", "", "--allowed-piggy-addresses=https://*.piggy.svc:8443")
	ns := s.namespace(t, nil)
	tests := []struct {
		name, addr, want string
	}{
		{"longer host", "https://piggy-secret-broker.piggy.svc.evil.example:8443", "is not an allowed broker address"},
		{"user information", "https://piggy-secret-broker.piggy.svc:8443@evil.example/", "has user information before the host"},
		{"two labels for the wildcard", "https://a.b.piggy.svc:8443", "is not an allowed broker address"},
		{"other port", "https://piggy-secret-broker.piggy.svc:9443", "is not an allowed broker address"},
		{"allowed", "https://piggy-secret-broker.piggy.svc:8443", ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.create(t, appPod(ns, "web-"+string(rune('a'+i)), map[string]string{"piggysec.com/piggy-address": tt.addr},
				corev1.Container{Image: "registry.example/app:1", Command: []string{"/a"}, Env: env("A", "piggy:A")}))
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("create: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("create error = %v, want %q", err, tt.want)
			}
		})
	}

	t.Run("prefix entry is refused at start", func(t *testing.T) {
		code, stderr := proctest.Run(t, proctest.Build(t, "."), append(s.pki.TLSArgs(),
			"--listen-address=127.0.0.1:0", "--grpc-address=127.0.0.1:0", "--metrics-address=127.0.0.1:0",
			"--kubeconfig", proctest.UnreachableKubeconfig(t), "--image-resolver-address=127.0.0.1:1",
			"--allowed-piggy-addresses=https://piggy-secret-broker.piggy.svc*"), nil)
		if code != 2 || !strings.Contains(stderr, "a wildcard may only be the whole leftmost DNS label") {
			t.Errorf("exit %d, stderr %q; want 2 and the wildcard rule", code, stderr)
		}
	})
}

// TestPullSecretOfAnotherNamespace is the admission issue's cross-namespace
// pull secret attack, through the real apiserver: a pod in one namespace
// names a pull secret of another namespace, whose image it could otherwise
// read the private command of (and learn whether the Secret exists). The
// pod is denied with one message whether or not the Secret exists.
func TestPullSecretOfAnotherNamespace(t *testing.T) {
	s := startStack(t, "pullsecret", "")
	victim, attacker := s.namespace(t, nil), s.namespace(t, nil)
	if _, err := s.cs.CoreV1().Secrets(victim).Create(t.Context(), registrytest.DockerConfigJSONSecret(victim, "regcred", s.private.Host, privateUser, privatePassword), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	s.private.Push(t, "victim-app:1", registrytest.Image(t, "linux/amd64", []string{"/victim-entry", "--token=private"}, nil))

	var messages []string
	for i, secret := range []string{"regcred", "no-such-secret"} {
		pod := appPod(attacker, fmt.Sprintf("thief-%d", i), map[string]string{
			"piggysec.com/aws-secret-name":             "team/app",
			"piggysec.com/image-pull-secret":           secret,
			"piggysec.com/image-pull-secret-namespace": victim,
		}, corev1.Container{Image: s.private.Ref("victim-app:1"), Env: env("A", "piggy:A")})
		p, err := s.create(t, pod)
		if err == nil {
			t.Fatalf("pull secret %s/%s: admitted, args %q", victim, secret, p.Spec.Containers[0].Args)
		}
		if strings.Contains(err.Error(), "victim-entry") {
			t.Errorf("the denial shows the victim's command: %v", err)
		}
		want := fmt.Sprintf(`pull secrets come from the pod's own namespace %q; namespace %q is not one the cluster operator shares pull secrets from`, attacker, victim)
		if !strings.Contains(err.Error(), want) {
			t.Errorf("pull secret %s/%s: error %v, want %q", victim, secret, err, want)
		}
		messages = append(messages, strings.ReplaceAll(err.Error(), pod.Name, "<pod>"))
	}
	if messages[0] != messages[1] {
		t.Errorf("an existing and a missing Secret are told apart:\n%s\n%s", messages[0], messages[1])
	}
}
