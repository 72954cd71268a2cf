package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	imageresolverv1 "github.com/piggysec/piggy/libs/gen/piggy/imageresolver/v1"
	"github.com/piggysec/piggy/libs/proctest"
	"github.com/piggysec/piggy/libs/registrytest"
)

// TestSIGTERMLosesNoAcceptedLookup is the faults issue's shutdown
// experiment for the resolver: 16 callers with the gateway's identity,
// one connection each, call ResolveImage in a loop while the resolver gets
// SIGTERM. An RPC the server started handling must return OK with the
// image's digest; only RPCs it never saw may fail (proctest.NeverAccepted:
// a refused dial once the listener is closed, or a stream grpc-go reports
// as drained or refused before the server had it). Each caller asks for
// its own repository and the tag cache is off (--tag-ttl=0), so every
// handled RPC talks to the registry while the process stops. Two rounds,
// since one round may miss the window.
func TestSIGTERMLosesNoAcceptedLookup(t *testing.T) {
	const callers = 16
	reg := registrytest.New(t, registrytest.Options{})
	digests := make([]string, callers)
	for i := range digests {
		digests[i] = reg.Push(t, fmt.Sprintf("app-%d:1", i), registrytest.Image(t, "linux/amd64", []string{"/bin/app"}, nil)).String()
	}
	bin := proctest.Build(t, ".")
	for round := range 2 {
		t.Run(fmt.Sprintf("round %d", round+1), func(t *testing.T) {
			pki := proctest.NewPKI(t)
			p := proctest.Start(t, bin, append([]string{"--grpc-address=127.0.0.1:0", "--metrics-address=127.0.0.1:0", "--kubernetes=off",
				"--registry-ca-file", reg.CAFile(t), "--allow-internal-registries", reg.Host, "--default-platform=linux/amd64",
				"--tag-ttl=0", "--registry-timeout=20s", "--shutdown-grace=10s"}, pki.TLSArgs()...), nil)
			addr := p.Addresses(t, "grpc")["grpc"]
			next := 0
			proctest.UnderSIGTERM(t, p, callers, func() (func() error, func()) {
				image, digest := reg.Ref(fmt.Sprintf("app-%d:1", next)), digests[next]
				next++
				conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(pki.Peer.ClientConfig("127.0.0.1"))))
				if err != nil {
					t.Fatal(err)
				}
				client := imageresolverv1.NewImageResolverServiceClient(conn)
				return func() error {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					resp, err := client.ResolveImage(ctx, &imageresolverv1.ResolveImageRequest{Image: image})
					switch {
					case err != nil:
						return err
					case resp.GetDigest() != digest:
						return fmt.Errorf("%s resolved to %s, want %s", image, resp.GetDigest(), digest)
					}
					return nil
				}, func() { _ = conn.Close() }
			})
		})
	}
}
