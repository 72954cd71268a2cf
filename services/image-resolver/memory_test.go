package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	imageresolverv1 "github.com/piggysec/piggy/libs/gen/piggy/imageresolver/v1"
	"github.com/piggysec/piggy/libs/proctest"
	"github.com/piggysec/piggy/libs/registrytest"
)

// TestMemoryUnderHugeConfigs is the admission issue's memory exhaustion
// attack: images whose config is 24 MiB, looked up at once from distinct
// repositories (so no cache or coalescing helps). Read whole, each costs
// a multiple of its size, and a few of them take the resolver past its
// memory limit. The resolver refuses each config over --max-config-bytes
// before reading it, with a message naming the limit, and its peak
// resident memory stays far below what reading them would take.
func TestMemoryUnderHugeConfigs(t *testing.T) {
	const (
		configSize = 24 << 20
		lookups    = 8
		bound      = 96 << 20 // peak RSS; reading the configs takes lookups x configSize and more
	)
	reg := registrytest.New(t, registrytest.Options{})
	huge, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{OS: "linux", Architecture: "amd64", Config: v1.Config{
		Entrypoint: []string{"/bin/app"}, Env: []string{"PADDING=" + strings.Repeat("x", configSize)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range lookups {
		reg.Push(t, fmt.Sprintf("huge%d/app:1", i), huge)
	}

	bin := proctest.Build(t, ".")
	pki := proctest.NewPKI(t)
	args := append([]string{"--grpc-address=127.0.0.1:0", "--metrics-address=127.0.0.1:0", "--kubernetes=off", "--ecr=off",
		"--registry-ca-file", reg.CAFile(t), "--allow-internal-networks=127.0.0.0/8", "--default-platform=linux/amd64", "--registry-timeout=20s"}, pki.TLSArgs()...)
	p := proctest.Start(t, bin, args, nil)
	addrs := p.Addresses(t, "grpc", "metrics")
	conn, err := grpc.NewClient(addrs["grpc"], grpc.WithTransportCredentials(credentials.NewTLS(pki.Peer.ClientConfig("127.0.0.1"))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := imageresolverv1.NewImageResolverServiceClient(conn)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	var wg sync.WaitGroup
	errs := make([]error, lookups)
	for i := range lookups {
		wg.Go(func() {
			_, errs[i] = client.ResolveImage(ctx, &imageresolverv1.ResolveImageRequest{Image: reg.Ref(fmt.Sprintf("huge%d/app:1", i))})
		})
	}
	wg.Wait()
	for i, err := range errs {
		msg := status.Convert(err).Message()
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(msg, "over the resolver's limit of 1048576 bytes (--max-config-bytes)") {
			t.Errorf("lookup %d: %v, want FailedPrecondition naming the config limit", i, err)
		}
	}
	peak, err := p.PeakRSS()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("resolver peak RSS after %d lookups of %d MiB configs: %d MiB", lookups, configSize>>20, peak>>20)
	if peak > bound {
		t.Errorf("resolver peak RSS %d MiB, want at most %d MiB", peak>>20, bound>>20)
	}
}
