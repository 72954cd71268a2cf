package main

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/piggysec/piggy/libs/proctest"
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
