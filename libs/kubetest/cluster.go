package kubetest

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Cluster is a running etcd and kube-apiserver on loopback. Its directory
// holds the etcd data, key material, the kubeconfig and the logs
// (etcd.log, kube-apiserver.log).
type Cluster struct {
	opts      Options
	dir       string
	host      string
	etcdURL   string
	caPEM     []byte
	token     string
	config    *rest.Config
	clientset *kubernetes.Clientset

	etcd, apiServer *process

	stopOnce sync.Once
	stopErr  error
}

// Start builds or finds the binaries (see EnsureBinaries), then starts etcd
// and kube-apiserver on free loopback ports and waits until the apiserver's
// /readyz passes. ctx bounds only starting: the cluster runs until Stop,
// which the caller must call (ForTest and Shared do). A failure to build or
// start is returned with the tail of the relevant output or log.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	bins, err := EnsureBinaries(ctx, opts)
	if err != nil {
		return nil, err
	}
	// The free ports are found before the processes bind them, so another
	// process can take one in between: try again with new ports then.
	for attempt := 1; ; attempt++ {
		dir, err := os.MkdirTemp(opts.WorkDir, "kubetest-")
		if err != nil {
			return nil, fmt.Errorf("kubetest: %w", err)
		}
		c := &Cluster{opts: opts, dir: dir}
		err = c.start(ctx, bins)
		if err == nil {
			return c, nil
		}
		_ = c.Stop()
		if attempt == 3 || !errors.Is(err, errAddrInUse) || ctx.Err() != nil {
			return nil, fmt.Errorf("kubetest: %w", err)
		}
	}
}

// errAddrInUse marks a process that exited because its port was taken.
var errAddrInUse = errors.New("address already in use")

func (c *Cluster) start(ctx context.Context, bins Binaries) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.startTimeout())
	defer cancel()

	keys, err := newPKI()
	if err != nil {
		return err
	}
	c.caPEM = keys.caCert
	tokenBytes := make([]byte, 32)
	_, _ = rand.Read(tokenBytes)
	c.token = hex.EncodeToString(tokenBytes)
	files := map[string][]byte{
		"ca.crt":         keys.caCert,
		"apiserver.crt":  keys.servingCert,
		"apiserver.key":  keys.servingKey,
		"sa.key":         keys.saKey,
		"sa.pub":         keys.saPub,
		"token-auth.csv": fmt.Appendf(nil, "%s,%s,%s,\"system:masters\"\n", c.token, AdminUser, AdminUser),
	}
	for name, data := range files {
		if err := os.WriteFile(c.path(name), data, 0o600); err != nil {
			return err
		}
	}

	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	etcdClient, etcdPeer, apiPort := ports[0], ports[1], ports[2]
	c.etcdURL = "http://127.0.0.1:" + strconv.Itoa(etcdClient)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(etcdPeer)
	c.host = "https://127.0.0.1:" + strconv.Itoa(apiPort)

	c.etcd, err = startProcess("etcd", bins.Etcd, []string{
		"--name=kubetest",
		"--data-dir=" + c.path("etcd-data"),
		"--listen-client-urls=" + c.etcdURL,
		"--advertise-client-urls=" + c.etcdURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=kubetest=" + peerURL,
		"--initial-cluster-state=new",
		"--unsafe-no-fsync",
		"--log-level=warn",
	}, c.dir, c.EtcdLog())
	if err != nil {
		return err
	}
	plain := &http.Client{Timeout: 2 * time.Second}
	if err := waitHealthy(ctx, c.etcd, plain, c.etcdURL+"/health", ""); err != nil {
		return err
	}

	args := []string{
		"--etcd-servers=" + c.etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		// The endpoint reconcilers refuse a loopback advertise address, and
		// nothing in-cluster dials the kubernetes Service here anyway.
		"--endpoint-reconciler-type=none",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--cert-dir=" + c.path("apiserver-certs"),
		"--tls-cert-file=" + c.path("apiserver.crt"),
		"--tls-private-key-file=" + c.path("apiserver.key"),
		"--token-auth-file=" + c.path("token-auth.csv"),
		"--authorization-mode=RBAC",
		"--service-account-issuer=" + ServiceAccountIssuer,
		"--service-account-key-file=" + c.path("sa.pub"),
		"--service-account-signing-key-file=" + c.path("sa.key"),
		"--api-audiences=" + strings.Join(c.opts.apiAudiences(), ","),
		"--service-cluster-ip-range=" + ServiceClusterIPRange,
		"--allow-privileged=true",
		// Priority and fairness only adds start-up work (and, on a busy
		// 2-core machine, throttling) to a single-tenant test apiserver.
		"--enable-priority-and-fairness=false",
		"--profiling=false",
	}
	args = append(args, c.opts.ExtraAPIServerFlags...)
	c.apiServer, err = startProcess("kube-apiserver", bins.APIServer, args, c.dir, c.APIServerLog())
	if err != nil {
		return err
	}

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.caPEM)
	secure := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
	}
	defer secure.CloseIdleConnections()
	if err := waitHealthy(ctx, c.apiServer, secure, c.host+"/readyz", c.token); err != nil {
		return err
	}

	c.config = &rest.Config{
		Host:            c.host,
		BearerToken:     c.token,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.caPEM},
		QPS:             -1, // no client-side throttling in tests
	}
	c.clientset, err = kubernetes.NewForConfig(c.config)
	if err != nil {
		return err
	}
	if err := c.createDefaultServiceAccount(ctx); err != nil {
		return err
	}
	return os.WriteFile(c.KubeconfigPath(), c.kubeconfig(), 0o600)
}

// createDefaultServiceAccount creates the "default" ServiceAccount of the
// "default" namespace, standing in for the controller manager, so that Pods
// can be created there. The namespace itself appears shortly after /readyz.
func (c *Cluster) createDefaultServiceAccount(ctx context.Context) error {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "default"}}
	for {
		_, err := c.clientset.CoreV1().ServiceAccounts("default").Create(ctx, sa, metav1.CreateOptions{})
		if err == nil || apierrors.IsAlreadyExists(err) {
			return nil
		}
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("create default/default service account: %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("create default/default service account: %w (last: %w)", ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitHealthy polls url until it answers 200, p exits or ctx ends. Errors
// carry the last answer and the tail of p's log.
func waitHealthy(ctx context.Context, p *process, client *http.Client, url, token string) error {
	start := time.Now()
	var last string
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		select {
		case <-p.done:
			tail := fileTail(p.logPath, 6<<10)
			err := fmt.Errorf("%s exited before it was ready (%v)\n--- %s ---\n%s", p.name, p.err, p.logPath, tail)
			if strings.Contains(tail, "address already in use") {
				err = fmt.Errorf("%w: %w", errAddrInUse, err)
			}
			return err
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s: %w; last %s: %s\n--- %s ---\n%s",
				p.name, time.Since(start).Round(time.Millisecond), ctx.Err(), url, last, p.logPath, fileTail(p.logPath, 6<<10))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// freePorts returns n distinct free TCP ports on 127.0.0.1. They are free
// when returned; another process could take one before it is used.
func freePorts(n int) ([]int, error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func (c *Cluster) path(name string) string { return filepath.Join(c.dir, name) }

// kubeconfig renders a self-contained kubeconfig for the admin user.
func (c *Cluster) kubeconfig() []byte {
	return fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
- name: kubetest
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    token: %s
contexts:
- name: kubetest
  context:
    cluster: kubetest
    user: %s
    namespace: default
current-context: kubetest
`, c.host, base64.StdEncoding.EncodeToString(c.caPEM), AdminUser, c.token, AdminUser)
}

// Stop stops kube-apiserver, then etcd (SIGTERM to each process group,
// SIGKILL after Options.StopTimeout), waits for them, and removes the
// cluster's directory unless Options.KeepDir is set. It only signals
// processes this Cluster started. It is safe to call more than once.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		for _, p := range []*process{c.apiServer, c.etcd} {
			if p != nil {
				p.stop(c.opts.stopTimeout())
			}
		}
		if !c.opts.KeepDir {
			c.stopErr = os.RemoveAll(c.dir)
		}
	})
	return c.stopErr
}

// RESTConfig returns a new admin (system:masters) config for the apiserver,
// trusting its CA. Callers may modify it.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.config) }

// Clientset returns an admin clientset.
func (c *Cluster) Clientset() *kubernetes.Clientset { return c.clientset }

// Host returns the apiserver URL, https://127.0.0.1:<port>.
func (c *Cluster) Host() string { return c.host }

// CAPEM returns the PEM certificate of the CA that signed the apiserver's
// serving certificate.
func (c *Cluster) CAPEM() []byte { return append([]byte(nil), c.caPEM...) }

// EtcdURL returns etcd's client URL, http://127.0.0.1:<port>.
func (c *Cluster) EtcdURL() string { return c.etcdURL }

// Dir returns the cluster's directory.
func (c *Cluster) Dir() string { return c.dir }

// KubeconfigPath returns the path of an admin kubeconfig, usable with
// kubectl (KUBECONFIG=... kubectl get pods -A) while the cluster runs.
func (c *Cluster) KubeconfigPath() string { return c.path("kubeconfig") }

// APIServerLog returns the path of kube-apiserver's log (stdout and stderr).
func (c *Cluster) APIServerLog() string { return c.path("kube-apiserver.log") }

// EtcdLog returns the path of etcd's log (stdout and stderr).
func (c *Cluster) EtcdLog() string { return c.path("etcd.log") }

// Running reports whether both processes are still running.
func (c *Cluster) Running() bool {
	return c.etcd != nil && c.apiServer != nil && !c.etcd.exited() && !c.apiServer.exited()
}
