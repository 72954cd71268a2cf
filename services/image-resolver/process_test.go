package main

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/testing/protocmp"

	imageresolverv1 "github.com/piggysec/piggy/libs/gen/piggy/imageresolver/v1"
	"github.com/piggysec/piggy/libs/proctest"
	"github.com/piggysec/piggy/libs/registrytest"
)

// TestProcessResolvesAndExportsMetrics runs the real binary against an
// in-process TLS registry trusted through --registry-ca-file, resolves an
// image over mTLS and checks the resolver's metrics on /metrics.
func TestProcessResolvesAndExportsMetrics(t *testing.T) {
	reg := registrytest.New(t, registrytest.Options{})
	img := registrytest.Image(t, "linux/amd64", []string{"/bin/app"}, []string{"serve"})
	digest := reg.Push(t, "app:1", img)

	bin := proctest.Build(t, ".")
	pki := proctest.NewPKI(t)
	args := append([]string{"--grpc-address=127.0.0.1:0", "--metrics-address=127.0.0.1:0", "--kubernetes=off",
		"--registry-ca-file", reg.CAFile(t), "--allow-internal-registries", reg.Host, "--default-platform=linux/amd64"}, pki.TLSArgs()...)
	p := proctest.Start(t, bin, args, nil)
	addrs := p.Addresses(t, "grpc", "metrics")

	conn, err := grpc.NewClient(addrs["grpc"], grpc.WithTransportCredentials(credentials.NewTLS(pki.Peer.ClientConfig("127.0.0.1"))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := imageresolverv1.NewImageResolverServiceClient(conn)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	for i, wantCached := range []bool{false, true} {
		got, err := client.ResolveImage(ctx, &imageresolverv1.ResolveImageRequest{Image: reg.Ref("app:1")})
		if err != nil {
			t.Fatalf("lookup %d: %v", i, err)
		}
		want := &imageresolverv1.ResolveImageResponse{
			Digest: digest.String(), Entrypoint: []string{"/bin/app"}, Cmd: []string{"serve"},
			Platform: &imageresolverv1.Platform{Os: "linux", Architecture: "amd64"}, Cached: wantCached,
		}
		if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
			t.Errorf("lookup %d mismatch (-want +got):\n%s", i, diff)
		}
	}
	if _, err := client.ResolveImage(ctx, &imageresolverv1.ResolveImageRequest{Image: reg.Ref("app:missing")}); err == nil {
		t.Error("unknown tag: want an error")
	}

	code, body := proctest.Get(t, "http://"+addrs["metrics"]+"/metrics", nil)
	if code != http.StatusOK {
		t.Fatalf("/metrics = %d", code)
	}
	for _, want := range []string{
		`piggy_image_resolver_lookups_total{`,
		`outcome="ok"`,
		`outcome="not_found"`,
		`piggy_image_resolver_registry_request_duration_seconds_bucket{`,
		`piggy_image_resolver_cache_hits_total{cache="tags"`,
		`piggy_image_resolver_cache_misses_total{cache="configs"`,
		`piggy_image_resolver_cache_coalesced_total{`,
		`piggy_image_resolver_cache_evictions_total{`,
		`piggy_image_resolver_cache_entries{cache="tags"`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics does not contain %q", want)
		}
	}
	if t.Failed() || testing.Verbose() {
		for _, l := range strings.Split(body, "\n") {
			if strings.HasPrefix(l, "piggy_image_resolver") && !strings.Contains(l, "_bucket") {
				t.Log(l)
			}
		}
	}
}
