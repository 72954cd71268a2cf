// Package resolverclient calls the image-resolver over mTLS gRPC for the
// mutation's ImageConfigResolver.
package resolverclient

import (
	"context"
	"crypto/tls"
	"fmt"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	imageresolverv1 "github.com/piggysec/piggy/libs/gen/piggy/imageresolver/v1"
	"github.com/piggysec/piggy/services/admission-gateway/internal/mutate"
)

// windowSize is the HTTP/2 flow-control window of the connection and of each
// stream. Lookups are a few hundred bytes each way; a fixed window this size
// never stalls them, and setting one turns off gRPC's bandwidth estimation,
// which otherwise sends a ping (and the resolver an acknowledgement) for
// most calls.
const windowSize = 1 << 20

// Dial returns a connection to the image-resolver at addr over mTLS (tlsConfig
// carries the client certificate), traced with OpenTelemetry. It does not
// connect until the first call.
func Dial(addr string, tlsConfig *tls.Config) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig)),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler()),
		grpc.WithInitialWindowSize(windowSize),
		grpc.WithInitialConnWindowSize(windowSize))
}

// Client adapts the generated client.
type Client struct {
	rpc imageresolverv1.ImageResolverServiceClient
}

// New returns a Client on a connection the caller owns.
func New(rpc imageresolverv1.ImageResolverServiceClient) *Client { return &Client{rpc: rpc} }

// Resolve asks the image-resolver for the image's ENTRYPOINT and CMD. Errors
// carry the resolver's message, which names no credential.
func (c *Client) Resolve(ctx context.Context, l mutate.ImageLookup) (mutate.ImageConfig, error) {
	req := &imageresolverv1.ResolveImageRequest{
		Image:          l.Image,
		Namespace:      l.Namespace,
		ServiceAccount: l.ServiceAccount,
		SkipTlsVerify:  l.SkipTLSVerify,
	}
	for _, s := range l.PullSecrets {
		req.PullSecrets = append(req.PullSecrets, &imageresolverv1.SecretReference{Namespace: s.Namespace, Name: s.Name})
	}
	if l.OS != "" || l.Arch != "" {
		req.Platform = &imageresolverv1.Platform{Os: l.OS, Architecture: l.Arch}
	}
	resp, err := c.rpc.ResolveImage(ctx, req)
	if err != nil {
		st := status.Convert(err)
		switch st.Code() {
		case codes.DeadlineExceeded:
			return mutate.ImageConfig{}, fmt.Errorf("image-resolver did not answer in time")
		case codes.Unavailable:
			return mutate.ImageConfig{}, fmt.Errorf("image-resolver unavailable: %s", st.Message())
		default:
			return mutate.ImageConfig{}, fmt.Errorf("%s", st.Message())
		}
	}
	return mutate.ImageConfig{Digest: resp.GetDigest(), Entrypoint: resp.GetEntrypoint(), Cmd: resp.GetCmd()}, nil
}
