// Command certgen prepares the local compose stack (docker-compose.yaml):
//
//	certgen -mode=certs -dir=/state     one CA, a certificate per service, the
//	                                    kube-apiserver's keys and kubeconfigs
//	certgen -mode=register -dir=/state  waits for the kube-apiserver, then
//	                                    creates the demo namespace and the
//	                                    webhook configuration for the gateway
//
// It is a development tool: everything lands in one directory (a bind mount
// of .cache/compose, gitignored) readable by the services' UID 65532. Files
// that exist are kept, so restarting the stack does not rotate anything;
// delete the directory to start over. It uses the standard library only and
// runs with "go run" from the golang image (GOWORK=off, file mode).
package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// Services get one certificate each, with server and client usage (they
// serve HTTPS/gRPC and call each other over mTLS with the same identity).
var services = []string{"admission-gateway", "image-resolver", "secret-broker"}

// uid owns the files so the distroless services (65532) can read them.
const uid = 65532

func main() {
	mode := flag.String("mode", "certs", "certs or register")
	dir := flag.String("dir", "/state", "output directory")
	apiserver := flag.String("apiserver", "https://kube-apiserver:6443", "kube-apiserver URL (register)")
	webhookURL := flag.String("webhook-url", "https://admission-gateway:8443/mutate", "URL the kube-apiserver calls (register)")
	flag.Parse()
	var err error
	switch *mode {
	case "certs":
		err = certs(*dir)
	case "register":
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		err = register(ctx, *dir, *apiserver, *webhookURL)
	default:
		err = fmt.Errorf("unknown -mode %q", *mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "certgen:", err)
		os.Exit(1)
	}
}

type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func certs(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	c, err := loadOrCreateCA(dir)
	if err != nil {
		return err
	}
	for _, s := range services {
		if err := leaf(dir, c, s, []string{s, "localhost", "127.0.0.1"}); err != nil {
			return err
		}
	}
	if err := leaf(dir, c, "kube-apiserver", []string{"kube-apiserver", "localhost", "127.0.0.1",
		"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "10.96.0.1"}); err != nil {
		return err
	}
	if err := serviceAccountKeys(dir); err != nil {
		return err
	}
	token, err := secretFile(dir, "admin.token", 32)
	if err != nil {
		return err
	}
	if err := keep(dir, "tokens.csv", []byte(fmt.Sprintf("%s,piggy-dev-admin,piggy-dev-admin,\"system:masters\"\n", token)), 0o640); err != nil {
		return err
	}
	// A web identity token for the broker's IRSA-style credentials against
	// LocalStack's STS (which does not verify it).
	if _, err := secretFile(dir, "aws-web-identity-token", 24); err != nil {
		return err
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return err
	}
	for name, server := range map[string]string{"kubeconfig": "https://kube-apiserver:6443", "kubeconfig.host": "https://127.0.0.1:6443"} {
		if err := keep(dir, name, kubeconfig(server, caPEM, token), 0o640); err != nil {
			return err
		}
	}
	fmt.Println("certgen: certificates and kubeconfigs are in", dir)
	return nil
}

func loadOrCreateCA(dir string) (*ca, error) {
	certPath, keyPath := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if pair, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil {
		cert, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			return nil, err
		}
		key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
		if !ok {
			return nil, errors.New("ca.key is not an ECDSA key; delete the directory to start over")
		}
		return &ca{cert: cert, key: key}, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "piggy compose CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	if err := write(keyPath, keyPEM(key), 0o600); err != nil {
		return nil, err
	}
	if err := write(certPath, pemBlock("CERTIFICATE", der), 0o644); err != nil {
		return nil, err
	}
	return &ca{cert: cert, key: key}, nil
}

// leaf issues <name>.crt/.key unless they exist and were issued by c.
func leaf(dir string, c *ca, name string, hosts []string) error {
	certPath, keyPath := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if pair, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil {
		if cert, err := x509.ParseCertificate(pair.Certificate[0]); err == nil && cert.CheckSignatureFrom(c.cert) == nil && time.Until(cert.NotAfter) > 30*24*time.Hour {
			return nil
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(1, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		return err
	}
	if err := write(keyPath, keyPEM(key), 0o640); err != nil {
		return err
	}
	return write(certPath, pemBlock("CERTIFICATE", der), 0o644)
}

// serviceAccountKeys writes the kube-apiserver's token signing key pair.
func serviceAccountKeys(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, "sa.key")); err == nil {
		return nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := write(filepath.Join(dir, "sa.pub"), pemBlock("PUBLIC KEY", pub), 0o644); err != nil {
		return err
	}
	return write(filepath.Join(dir, "sa.key"), keyPEM(key), 0o600)
}

func secretFile(dir, name string, n int) (string, error) {
	path := filepath.Join(dir, name)
	if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
		return string(bytes.TrimSpace(b)), nil
	}
	buf := make([]byte, n)
	_, _ = rand.Read(buf)
	v := hex.EncodeToString(buf)
	return v, write(path, []byte(v), 0o640)
}

func kubeconfig(server string, caPEM []byte, token string) []byte {
	return []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
  - name: piggy-compose
    cluster:
      server: %s
      certificate-authority-data: %s
users:
  - name: piggy-dev-admin
    user:
      token: %s
contexts:
  - name: piggy-compose
    context: {cluster: piggy-compose, user: piggy-dev-admin, namespace: demo}
current-context: piggy-compose
`, server, base64.StdEncoding.EncodeToString(caPEM), token))
}

// register creates the demo namespace and points a MutatingWebhookConfiguration
// at the gateway container. The rules and match condition are the chart's.
func register(ctx context.Context, dir, apiserver, webhookURL string) error {
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return err
	}
	token, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	api := &apiClient{base: apiserver, token: string(bytes.TrimSpace(token)),
		http: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}}
	for {
		if err := api.do(ctx, http.MethodGet, "/readyz", nil); err == nil {
			break
		} else if ctx.Err() != nil {
			return fmt.Errorf("kube-apiserver not ready: %w", err)
		}
		time.Sleep(time.Second)
	}
	objects := []struct {
		path, name string
		body       any
	}{
		{"/api/v1/namespaces", "demo", map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": "demo"}}},
		{"/api/v1/namespaces/demo/serviceaccounts", "default", map[string]any{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": map[string]any{"name": "default", "namespace": "demo"}}},
		{"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", "piggy-compose", webhookConfiguration(webhookURL, caPEM)},
	}
	for _, o := range objects {
		// Replace what a previous run created: delete (ignoring "not
		// found"), then create.
		_ = api.do(ctx, http.MethodDelete, o.path+"/"+o.name, nil)
		if err := api.do(ctx, http.MethodPost, o.path, o.body); err != nil && !errors.Is(err, errConflict) {
			return fmt.Errorf("create %s/%s: %w", o.path, o.name, err)
		}
	}
	fmt.Println("certgen: webhook registered; try: kubectl --kubeconfig .cache/compose/kubeconfig.host get mutatingwebhookconfigurations")
	return nil
}

func webhookConfiguration(url string, caPEM []byte) map[string]any {
	return map[string]any{
		"apiVersion": "admissionregistration.k8s.io/v1",
		"kind":       "MutatingWebhookConfiguration",
		"metadata":   map[string]any{"name": "piggy-compose"},
		"webhooks": []any{map[string]any{
			"name":                    "pods.piggysec.com",
			"admissionReviewVersions": []string{"v1"},
			"sideEffects":             "None",
			"failurePolicy":           "Fail",
			"timeoutSeconds":          5,
			"reinvocationPolicy":      "IfNeeded",
			"clientConfig":            map[string]any{"url": url, "caBundle": base64.StdEncoding.EncodeToString(caPEM)},
			"rules": []any{map[string]any{
				"apiGroups": []string{""}, "apiVersions": []string{"v1"}, "operations": []string{"CREATE"},
				"resources": []string{"pods"}, "scope": "Namespaced",
			}},
			"namespaceSelector": map[string]any{"matchExpressions": []any{map[string]any{
				"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": []string{"kube-system"},
			}}},
			"matchConditions": []any{map[string]any{
				"name":       "has-piggy-annotation",
				"expression": "has(object.metadata.annotations) && object.metadata.annotations.exists(k, k.startsWith('piggysec.com/'))",
			}},
		}},
	}
}

var errConflict = errors.New("already exists")

type apiClient struct {
	base, token string
	http        *http.Client
}

func (a *apiClient) do(ctx context.Context, method, path string, body any) error {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, r)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	switch {
	case resp.StatusCode == http.StatusConflict:
		return errConflict
	case resp.StatusCode/100 != 2:
		return fmt.Errorf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, msg)
	}
	return nil
}

// keep writes data to dir/name unless the file exists.
func keep(dir, name string, data []byte, mode os.FileMode) error {
	path := filepath.Join(dir, name)
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	return write(path, data, mode)
}

func write(path string, data []byte, mode os.FileMode) error {
	if err := os.WriteFile(path, data, mode); err != nil {
		return err
	}
	if err := os.Chmod(path, mode); err != nil {
		return err
	}
	// Best effort: only root can chown (the compose service runs as root).
	if os.Geteuid() == 0 {
		return os.Chown(path, uid, uid)
	}
	return nil
}

func keyPEM(k *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		panic(err) // impossible for a P-256 key
	}
	return pemBlock("PRIVATE KEY", der)
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}
