package grpcapi_test

import (
	"testing"

	imageresolverv1 "github.com/piggysec/piggy/libs/gen/piggy/imageresolver/v1"
	"github.com/piggysec/piggy/libs/registrytest"
)

// BenchmarkResolveImageWarmGRPC is a warm lookup as the admission-gateway
// makes it: a unary call over a real mTLS connection on loopback.
func BenchmarkResolveImageWarmGRPC(b *testing.B) {
	reg := registrytest.New(b, registrytest.Options{})
	reg.Push(b, "app:1", registrytest.Image(b, "linux/amd64", []string{"/bin/app"}, nil))
	r, _ := newResolver(b, pool(reg), nil)
	client := serveGRPC(b, r)
	req := &imageresolverv1.ResolveImageRequest{Image: reg.Ref("app:1"), Namespace: "team"}
	if _, err := client.ResolveImage(b.Context(), req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := client.ResolveImage(b.Context(), req); err != nil {
			b.Fatal(err)
		}
	}
}
