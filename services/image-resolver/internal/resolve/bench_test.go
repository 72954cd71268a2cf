package resolve_test

import (
	"testing"

	"k8s.io/client-go/kubernetes/fake"

	"github.com/piggysec/piggy/libs/registrytest"
	"github.com/piggysec/piggy/services/image-resolver/internal/resolve"
)

// benchSetup is a basic-auth registry with one image and a namespace whose
// service account grants access to it, as most production lookups look.
func benchSetup(b *testing.B) (*registrytest.Registry, *fake.Clientset, resolve.Request) {
	reg := registrytest.New(b, registrytest.Options{Username: "u", Password: "p"})
	reg.Push(b, "app:1", registrytest.Image(b, "linux/amd64", []string{"/bin/app"}, []string{"serve"}))
	cs := fake.NewClientset(
		registrytest.DockerConfigJSONSecret("team", "regcred", reg.Host, "u", "p"),
		registrytest.ServiceAccount("team", "runner", "regcred"),
	)
	return reg, cs, resolve.Request{Image: reg.Ref("app:1"), Namespace: "team", ServiceAccount: "runner"}
}

// BenchmarkResolveWarm is the admission hot path: credentials read (fake
// API), tag and config cache hits, no registry call.
func BenchmarkResolveWarm(b *testing.B) {
	reg, cs, req := benchSetup(b)
	r := newResolver(b, reg, cs.CoreV1())
	if _, err := r.Resolve(b.Context(), req); err != nil {
		b.Fatal(err)
	}
	before := reg.Requests()
	b.ReportAllocs()
	for b.Loop() {
		res, err := r.Resolve(b.Context(), req)
		if err != nil || !res.Cached {
			b.Fatalf("Resolve() = %+v, %v; want a cache hit", res, err)
		}
	}
	if reg.Requests() != before {
		b.Fatal("warm lookups reached the registry")
	}
}

// BenchmarkResolveWarmAnonymous is the warm path without Kubernetes reads.
func BenchmarkResolveWarmAnonymous(b *testing.B) {
	reg := registrytest.New(b, registrytest.Options{})
	reg.Push(b, "app:1", registrytest.Image(b, "linux/amd64", []string{"/bin/app"}, nil))
	r := newResolver(b, reg, nil)
	req := resolve.Request{Image: reg.Ref("app:1")}
	if _, err := r.Resolve(b.Context(), req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Resolve(b.Context(), req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkResolveCold reads everything from the registry each time (a new
// resolver: TLS handshake, ping, manifest, config blob) over loopback.
func BenchmarkResolveCold(b *testing.B) {
	reg, cs, req := benchSetup(b)
	b.ReportAllocs()
	for b.Loop() {
		r := newResolver(b, reg, cs.CoreV1())
		if _, err := r.Resolve(b.Context(), req); err != nil {
			b.Fatal(err)
		}
	}
}
