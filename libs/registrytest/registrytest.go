// Package registrytest runs go-containerregistry's in-process registry for
// tests, over TLS (or plain HTTP), optionally behind basic auth, counting
// every request, and builds the images, indexes and pull secrets the
// resolver tests need.
package registrytest

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Options configures a Registry.
type Options struct {
	// Username and Password, when set, are required on every request
	// (basic auth, challenged with 401 like a real registry).
	Username, Password string
	// PlainHTTP serves without TLS.
	PlainHTTP bool
}

// Registry is a running in-process OCI registry.
type Registry struct {
	// Server is the HTTP(S) server.
	Server *httptest.Server
	// Host is host:port of the registry, as written in image references.
	Host string

	opts   Options
	mu     sync.Mutex
	counts map[string]int
	delay  time.Duration
	fault  ManifestFault
	raw    map[string]rawManifest // "/v2/<repo>/manifests/<tag>" -> what to serve

	manifestsInFlight, maxManifestsInFlight int
}

type rawManifest struct {
	mediaType string
	body      []byte
	unsized   bool // sent without Content-Length
}

// ManifestFault is a way manifest requests misbehave (see SetManifestFault).
type ManifestFault int

const (
	// ManifestsServed is no fault: manifests are served as stored.
	ManifestsServed ManifestFault = iota
	// ManifestsEmpty answers 200 with no body and no Content-Type, as a
	// registry or proxy may do when its own upstream gives up.
	ManifestsEmpty
	// ManifestsCutOff sends the headers of a manifest and part of its body,
	// then drops the connection.
	ManifestsCutOff
)

// New starts a registry that stops when the test ends.
func New(t testing.TB, opts Options) *Registry {
	t.Helper()
	r := &Registry{opts: opts, counts: map[string]int{}}
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	handler := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.counts[req.Method+" "+req.URL.Path]++
		delay, fault := r.delay, r.fault
		r.mu.Unlock()
		r.mu.Lock()
		raw, isRaw := r.raw[req.URL.Path]
		r.mu.Unlock()
		if isRaw && (req.Method == http.MethodGet || req.Method == http.MethodHead) {
			w.Header().Set("Content-Type", raw.mediaType)
			if !raw.unsized {
				w.Header().Set("Content-Length", fmt.Sprint(len(raw.body)))
			}
			if req.Method == http.MethodGet {
				_, _ = w.Write(raw.body)
			}
			return
		}
		if strings.Contains(req.URL.Path, "/manifests/") {
			r.mu.Lock()
			r.manifestsInFlight++
			r.maxManifestsInFlight = max(r.maxManifestsInFlight, r.manifestsInFlight)
			r.mu.Unlock()
			defer func() {
				r.mu.Lock()
				r.manifestsInFlight--
				r.mu.Unlock()
			}()
			if delay > 0 {
				select {
				case <-time.After(delay):
				case <-req.Context().Done():
					return
				}
			}
			switch fault {
			case ManifestsEmpty:
				w.WriteHeader(http.StatusOK)
				return
			case ManifestsCutOff:
				w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
				w.Header().Set("Content-Length", "4096")
				w.WriteHeader(http.StatusOK)
				_, _ = io.WriteString(w, `{"schemaVersion":2,"mediaType":`)
				if f, ok := w.(http.Flusher); ok {
					f.Flush()
				}
				panic(http.ErrAbortHandler) // drops the connection mid-body
			}
		}
		if opts.Username != "" {
			u, p, ok := req.BasicAuth()
			if !ok || u != opts.Username || p != opts.Password {
				w.Header().Set("WWW-Authenticate", `Basic realm="piggy-test"`)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				_, _ = io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
				return
			}
		}
		h.ServeHTTP(w, req)
	})
	r.Server = httptest.NewUnstartedServer(handler)
	r.Server.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	if opts.PlainHTTP {
		r.Server.Start()
	} else {
		r.Server.StartTLS()
	}
	t.Cleanup(r.Server.Close)
	r.Host = strings.TrimPrefix(strings.TrimPrefix(r.Server.URL, "https://"), "http://")
	return r
}

// SetManifestDelay makes manifest requests wait d (or until the client
// gives up) before they are answered.
func (r *Registry) SetManifestDelay(d time.Duration) {
	r.mu.Lock()
	r.delay = d
	r.mu.Unlock()
}

// ServeRawManifest answers GET and HEAD of repoTag's manifest with body as
// mediaType, as a registry under an attacker's control may: the registry's
// own checks (an index's children must exist) do not apply.
func (r *Registry) ServeRawManifest(repoTag, mediaType string, body []byte) {
	repo, tag, _ := strings.Cut(repoTag, ":")
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.raw == nil {
		r.raw = map[string]rawManifest{}
	}
	r.raw["/v2/"+repo+"/manifests/"+tag] = rawManifest{mediaType: mediaType, body: body}
}

// ServeRawManifestUnsized is ServeRawManifest without a Content-Length:
// the body is streamed, so its size shows only while it is read.
func (r *Registry) ServeRawManifestUnsized(repoTag, mediaType string, body []byte) {
	r.ServeRawManifest(repoTag, mediaType, body)
	repo, tag, _ := strings.Cut(repoTag, ":")
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.raw["/v2/"+repo+"/manifests/"+tag]
	m.unsized = true
	r.raw["/v2/"+repo+"/manifests/"+tag] = m
}

// MaxManifestsInFlight is the largest number of manifest requests
// (other than raw ones) the registry was answering at once.
func (r *Registry) MaxManifestsInFlight() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.maxManifestsInFlight
}

// SetManifestFault makes every manifest request misbehave as f says
// (after any delay).
func (r *Registry) SetManifestFault(f ManifestFault) {
	r.mu.Lock()
	r.fault = f
	r.mu.Unlock()
}

// Count returns how many requests had method and path
// (e.g. "GET", "/v2/app/manifests/1").
func (r *Registry) Count(method, path string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts[method+" "+path]
}

// ManifestGets counts GET requests for manifests of repo (any tag or digest).
func (r *Registry) ManifestGets(repo string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for k, c := range r.counts {
		if strings.HasPrefix(k, "GET /v2/"+repo+"/manifests/") {
			n += c
		}
	}
	return n
}

// Requests is the total number of requests served.
func (r *Registry) Requests() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.counts {
		n += c
	}
	return n
}

// Ref returns the full reference of repoTag ("repo:tag" or "repo@digest").
func (r *Registry) Ref(repoTag string) string { return r.Host + "/" + repoTag }

// CertPool trusts the registry's certificate.
func (r *Registry) CertPool() *x509.CertPool {
	pool := x509.NewCertPool()
	if c := r.Server.Certificate(); c != nil {
		pool.AddCert(c)
	}
	return pool
}

// CAFile writes the registry's certificate as PEM into a temp file.
func (r *Registry) CAFile(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "registry-ca.crt")
	data := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Server.Certificate().Raw})
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (r *Registry) writeOptions() []remote.Option {
	opts := []remote.Option{remote.WithTransport(r.Server.Client().Transport), remote.WithContext(context.Background())}
	if r.opts.Username != "" {
		opts = append(opts, remote.WithAuth(&authn.Basic{Username: r.opts.Username, Password: r.opts.Password}))
	}
	return opts
}

func (r *Registry) parse(t testing.TB, repoTag string) name.Reference {
	t.Helper()
	var nopts []name.Option
	if r.opts.PlainHTTP {
		nopts = append(nopts, name.Insecure)
	}
	ref, err := name.ParseReference(r.Ref(repoTag), nopts...)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// Push uploads img as repoTag and returns its manifest digest.
func (r *Registry) Push(t testing.TB, repoTag string, img v1.Image) v1.Hash {
	t.Helper()
	if err := remote.Write(r.parse(t, repoTag), img, r.writeOptions()...); err != nil {
		t.Fatalf("push %s: %v", repoTag, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// PushIndex uploads idx as repoTag and returns its digest.
func (r *Registry) PushIndex(t testing.TB, repoTag string, idx v1.ImageIndex) v1.Hash {
	t.Helper()
	if err := remote.WriteIndex(r.parse(t, repoTag), idx, r.writeOptions()...); err != nil {
		t.Fatalf("push index %s: %v", repoTag, err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// Image returns a random one-layer image for platform ("os/arch[/variant]")
// with the given ENTRYPOINT and CMD (nil leaves them unset).
func Image(t testing.TB, platform string, entrypoint, cmd []string) v1.Image {
	t.Helper()
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	parts := strings.Split(platform, "/")
	cf.OS, cf.Architecture = parts[0], parts[1]
	if len(parts) > 2 {
		cf.Variant = parts[2]
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	if img, err = mutate.Config(img, v1.Config{Entrypoint: entrypoint, Cmd: cmd}); err != nil {
		t.Fatal(err)
	}
	return img
}

// Index returns a multi-platform index of imgs, each described by the
// platform of its config.
func Index(t testing.TB, imgs ...v1.Image) v1.ImageIndex {
	t.Helper()
	var adds []mutate.IndexAddendum
	for _, img := range imgs {
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			Platform: &v1.Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant},
		}})
	}
	return mutate.AppendManifests(empty.Index, adds...)
}

// DockerConfigJSONSecret is a kubernetes.io/dockerconfigjson pull secret
// for registry.
func DockerConfigJSONSecret(namespace, name, registry, username, password string) *corev1.Secret {
	data, _ := json.Marshal(map[string]any{"auths": map[string]any{registry: authEntry(username, password)}})
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: data},
	}
}

// DockercfgSecret is a legacy kubernetes.io/dockercfg pull secret for registry.
func DockercfgSecret(namespace, name, registry, username, password string) *corev1.Secret {
	data, _ := json.Marshal(map[string]any{registry: authEntry(username, password)})
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Type:       corev1.SecretTypeDockercfg,
		Data:       map[string][]byte{corev1.DockerConfigKey: data},
	}
}

func authEntry(username, password string) map[string]string {
	return map[string]string{
		"username": username,
		"password": password,
		"auth":     base64.StdEncoding.EncodeToString([]byte(username + ":" + password)),
	}
}

// ServiceAccount returns a service account with imagePullSecrets.
func ServiceAccount(namespace, name string, pullSecrets ...string) *corev1.ServiceAccount {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	for _, s := range pullSecrets {
		sa.ImagePullSecrets = append(sa.ImagePullSecrets, corev1.LocalObjectReference{Name: s})
	}
	return sa
}

// Blackhole is a TCP listener that accepts connections and never answers,
// closed when the test ends; it returns its host:port.
func Blackhole(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String()
}

// ClosedPort returns a loopback host:port nothing listens on.
func ClosedPort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// String describes the registry.
func (r *Registry) String() string { return fmt.Sprintf("registry %s", r.Host) }
