package grpcapi_test

import (
	"context"
	"crypto/x509"
	"net"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	imageresolverv1 "github.com/piggysec/piggy/libs/gen/piggy/imageresolver/v1"
	"github.com/piggysec/piggy/libs/proctest"
	"github.com/piggysec/piggy/libs/registrytest"
	"github.com/piggysec/piggy/libs/serve"
	"github.com/piggysec/piggy/libs/tlsreload"
	"github.com/piggysec/piggy/services/image-resolver/internal/grpcapi"
	"github.com/piggysec/piggy/services/image-resolver/internal/keychain"
	"github.com/piggysec/piggy/services/image-resolver/internal/resolve"
)

// newResolver builds a resolver trusting roots, reading pull secrets from
// a fake clientset holding objs (nil objs: Kubernetes off).
func newResolver(t testing.TB, roots *x509.CertPool, objs []runtime.Object, mods ...func(*resolve.Options)) (*resolve.Resolver, *fake.Clientset) {
	t.Helper()
	var (
		cs   *fake.Clientset
		kube keychain.Kube
	)
	if objs != nil {
		cs = fake.NewClientset(objs...)
		kube = cs.CoreV1()
	}
	opts := resolve.Options{
		Keychain:         keychain.New(kube),
		DefaultPlatform:  resolve.Platform{OS: "linux", Architecture: "amd64"},
		RootCAs:          roots,
		Destinations:     loopbackAllowed,
		Timeout:          4 * time.Second,
		ConfigCacheSize:  2048,
		TagCacheSize:     4096,
		TagTTL:           time.Minute,
		NegativeTTL:      5 * time.Second,
		MaxManifestBytes: resolve.DefaultMaxManifestBytes,
		MaxConfigBytes:   resolve.DefaultMaxConfigBytes,
		MaxColdLookups:   resolve.DefaultMaxColdLookups,
	}
	for _, m := range mods {
		m(&opts)
	}
	r, err := resolve.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return r, cs
}

// serveGRPC serves r over a real mTLS listener on loopback and returns a
// client with a certificate of the same test CA.
func serveGRPC(t testing.TB, r grpcapi.Resolver) imageresolverv1.ImageResolverServiceClient {
	t.Helper()
	addr, pki := startGRPC(t, r)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(pki.Client.ClientConfig("127.0.0.1"))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return imageresolverv1.NewImageResolverServiceClient(conn)
}

// startGRPC serves r with mTLS on a loopback port until the test ends.
func startGRPC(t testing.TB, r grpcapi.Resolver) (string, *proctest.PKI) {
	t.Helper()
	pki := proctest.NewPKI(t)
	src, err := tlsreload.Load(pki.Service)
	if err != nil {
		t.Fatal(err)
	}
	s, h, err := serve.NewGRPCServer(serve.GRPCOptions{TLS: src.ServerConfig(true), Callers: serve.AnyVerifiedClient()})
	if err != nil {
		t.Fatal(err)
	}
	grpcapi.New(r, nil).Register(s)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve.GRPC(ctx, s, h, ln, time.Second) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("grpc server: %v", err)
		}
	})
	return ln.Addr().String(), pki
}

// pool trusts the certificates of regs.
func pool(regs ...*registrytest.Registry) *x509.CertPool {
	p := x509.NewCertPool()
	for _, r := range regs {
		p.AddCert(r.Server.Certificate())
	}
	return p
}

// loopbackAllowed lets the resolver reach the tests' registries, which
// listen on loopback (TestInternalDestinations covers the default).
var loopbackAllowed = resolve.Destinations{Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}}
