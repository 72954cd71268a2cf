package main

import (
	"crypto/tls"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/piggysec/piggy/libs/kubetest"
	"github.com/piggysec/piggy/libs/testca"
)

// TestForgedReviewsNeedTheAPIServersCertificate is the admission issue's
// forged-review attack: anybody who reaches the webhook port can POST an
// AdmissionReview naming any namespace, and the gateway reads that
// namespace's ConfigMaps for it and answers with the patch. With
// --webhook-client-ca-file the gateway answers only the kube-apiserver,
// which presents the client certificate its AdmissionConfiguration names
// (kubeConfigFile): pods created through the real apiserver are mutated,
// while a forged review, with no certificate or with another certificate
// of the same CA than the names allowed, is refused in the TLS handshake.
func TestForgedReviewsNeedTheAPIServersCertificate(t *testing.T) {
	dir := t.TempDir()
	clientCA, err := testca.New("kube-apiserver webhook clients")
	if err != nil {
		t.Fatal(err)
	}
	apiserver, err := clientCA.WriteFiles(dir, "kube-apiserver", testca.Request{CommonName: "kube-apiserver", Usage: testca.Client})
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := clientCA.WriteFiles(dir, "stranger", testca.Request{CommonName: "someone-else", Usage: testca.Client})
	if err != nil {
		t.Fatal(err)
	}
	// The kubeconfig's "*" user is the apiserver's credential for every
	// webhook, so the gateway can take any free port after the apiserver
	// has started (a port chosen before and bound later could be taken by
	// another process meanwhile).
	kubeconfig := filepath.Join(dir, "webhook-kubeconfig.yaml")
	admission := filepath.Join(dir, "admission.yaml")
	write(t, kubeconfig, `apiVersion: v1
kind: Config
users:
- name: "*"
  user:
    client-certificate: `+apiserver.CertFile+`
    client-key: `+apiserver.KeyFile+`
`)
	write(t, admission, `apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: MutatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: `+kubeconfig+`
`)
	opts := kubetest.DefaultOptions(os.Getenv)
	opts.ExtraAPIServerFlags = []string{"--admission-control-config-file=" + admission}
	c := kubetest.ForTestWithOptions(t, opts)

	s := startStackOn(t, c, "apiserver-only", "",
		"--webhook-client-ca-file="+apiserver.CAFile, "--webhook-client-names=kube-apiserver")
	ns := s.namespace(t, nil)
	pod := appPod(ns, "app", map[string]string{"piggysec.com/aws-secret-name": "team/app"},
		corev1.Container{Image: "registry.example/app:1", Command: []string{"/app"}, Env: env("A", "piggy:A")})

	got, err := s.create(t, pod)
	if err != nil || !mutated(got) {
		t.Fatalf("pod through the apiserver: %v (mutated: %v)\ngateway log:\n%s", err, got != nil && mutated(got), s.gateway.Output())
	}

	forged := func(client *http.Client) error {
		_, err := s.forge(t.Context(), client, ns, pod)
		return err
	}
	// A refusal in the handshake: no AdmissionReview answer comes back.
	if err := forged(s.peerClient(5 * time.Second)); err == nil || strings.Contains(err.Error(), "review answer") {
		t.Errorf("forged review without a client certificate: %v, want the connection refused", err)
	}
	withCert := s.peerClient(5 * time.Second)
	cert, err := tls.LoadX509KeyPair(stranger.CertFile, stranger.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	withCert.Transport.(*http.Transport).TLSClientConfig.Certificates = []tls.Certificate{cert}
	if err := forged(withCert); err == nil || strings.Contains(err.Error(), "review answer") {
		t.Errorf("forged review with a certificate of the same CA but another name: %v, want the connection refused", err)
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
