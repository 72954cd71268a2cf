package kubetest

import (
	"io"
	"os"
	"path/filepath"
	"time"
)

// Versions built by default.
const (
	// DefaultKubernetesVersion is the k8s.io/kubernetes module version
	// kube-apiserver is built from.
	DefaultKubernetesVersion = "v1.37.2"
	// DefaultEtcdVersion is the go.etcd.io/etcd/server/v3 module version etcd
	// is built from.
	DefaultEtcdVersion = "v3.7.3"
)

// Cluster-wide settings the apiserver is started with.
const (
	// ServiceAccountIssuer is the issuer ("iss") of service account tokens,
	// also the default API audience.
	ServiceAccountIssuer = "https://kubernetes.default.svc.cluster.local"
	// ServiceClusterIPRange is the Service ClusterIP range.
	ServiceClusterIPRange = "10.96.0.0/16"
	// AdminUser is the user name of the admin token, a member of
	// system:masters.
	AdminUser = "kubetest-admin"
)

// Environment variables read by DefaultOptions.
const (
	// EnvCacheDir overrides the cache root (Options.CacheDir).
	EnvCacheDir = "PIGGY_KUBE_CACHE_DIR"
	// EnvAssets names a directory with prebuilt kube-apiserver and etcd
	// binaries (Options.AssetsDir), as with controller-runtime's envtest.
	EnvAssets = "KUBEBUILDER_ASSETS"
)

// Options configures how binaries are found or built and how a cluster is
// started. The zero value is usable only with CacheDir or AssetsDir set;
// DefaultOptions fills in everything.
type Options struct {
	// CacheDir is the root of the binary cache; binaries live in
	// CacheDir/kubernetes-<version>/kube-apiserver and
	// CacheDir/etcd-<version>/etcd. Ignored when AssetsDir is set.
	CacheDir string
	// AssetsDir, when set, holds prebuilt kube-apiserver and etcd binaries
	// to use as they are; nothing is built.
	AssetsDir string
	// KubernetesVersion is the k8s.io/kubernetes version to build
	// kube-apiserver from; empty means DefaultKubernetesVersion.
	KubernetesVersion string
	// EtcdVersion is the go.etcd.io/etcd/server/v3 version to build etcd
	// from; empty means DefaultEtcdVersion.
	EtcdVersion string
	// GoCommand is the go command used to build; empty means "go" from PATH
	// (go test puts its own toolchain first in PATH).
	GoCommand string

	// Progress receives build progress lines (nil: none).
	Progress io.Writer
	// Logf, if set, also receives build progress lines (for example
	// testing.T.Logf).
	Logf func(format string, args ...any)

	// WorkDir is where each cluster's temporary directory (data, certs,
	// logs, kubeconfig) is created; empty means os.TempDir().
	WorkDir string
	// KeepDir keeps the cluster's directory after Stop, for post-mortems.
	KeepDir bool
	// StartTimeout bounds waiting for etcd and kube-apiserver to become
	// ready once the binaries exist; zero means 90 seconds.
	StartTimeout time.Duration
	// StopTimeout is how long Stop waits after SIGTERM before it sends
	// SIGKILL; zero means 10 seconds.
	StopTimeout time.Duration
	// APIAudiences are the apiserver's --api-audiences; empty means
	// ServiceAccountIssuer.
	APIAudiences []string
	// ExtraAPIServerFlags are appended to the kube-apiserver command line
	// (later flags win), for example "--feature-gates=...".
	ExtraAPIServerFlags []string
}

// DefaultOptions returns Options with the cache under
// <os.UserCacheDir()>/piggy/kube, progress on os.Stderr and the
// EnvCacheDir and EnvAssets overrides taken from getenv (pass os.Getenv).
// It is the only place the package reads the environment.
func DefaultOptions(getenv func(string) string) Options {
	opts := Options{
		KubernetesVersion: DefaultKubernetesVersion,
		EtcdVersion:       DefaultEtcdVersion,
		Progress:          os.Stderr,
		CacheDir:          getenv(EnvCacheDir),
		AssetsDir:         getenv(EnvAssets),
	}
	if opts.CacheDir == "" {
		if dir, err := os.UserCacheDir(); err == nil {
			opts.CacheDir = filepath.Join(dir, "piggy", "kube")
		}
	}
	return opts
}

func (o Options) kubernetesVersion() string {
	if o.KubernetesVersion == "" {
		return DefaultKubernetesVersion
	}
	return o.KubernetesVersion
}

func (o Options) etcdVersion() string {
	if o.EtcdVersion == "" {
		return DefaultEtcdVersion
	}
	return o.EtcdVersion
}

func (o Options) startTimeout() time.Duration {
	if o.StartTimeout <= 0 {
		return 90 * time.Second
	}
	return o.StartTimeout
}

func (o Options) stopTimeout() time.Duration {
	if o.StopTimeout <= 0 {
		return 10 * time.Second
	}
	return o.StopTimeout
}

func (o Options) apiAudiences() []string {
	if len(o.APIAudiences) == 0 {
		return []string{ServiceAccountIssuer}
	}
	return o.APIAudiences
}
