package serve

import (
	"context"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Callers says which client identities may call which methods of a gRPC
// server. A client's identities are the DNS and URI subject alternative
// names and the common name of the certificate it presented, which the
// server's mTLS configuration has already verified against the CA (with
// RequireAndVerifyClientCert, or as tlsreload does in VerifyConnection).
//
// Every method must be covered by a rule: a method without one is refused
// to everybody, unless the rule for AllMethods covers it. The health service and server reflection stay open to any
// verified client (probes and grpcurl's schema lookups carry no data).
type Callers map[string][]string

// Anyone in a Callers rule lets any client the CA verified call the method.
const Anyone = "*"

// AllMethods as a Callers key is the rule for methods no other rule names.
const AllMethods = "*"

// AnyVerifiedClient lets every client the CA verified call every method.
func AnyVerifiedClient() Callers { return Callers{AllMethods: {Anyone}} }

// open are the methods every verified client may call.
var open = []string{
	"/" + healthpb.Health_ServiceDesc.ServiceName + "/",
	"/grpc.reflection.v1.ServerReflection/",
	"/grpc.reflection.v1alpha.ServerReflection/",
}

// Allow adds identities to the callers of methods, each a full method name
// ("/piggy.imageresolver.v1.ImageResolverService/ResolveImage").
func (c Callers) Allow(identities []string, methods ...string) Callers {
	for _, m := range methods {
		c[m] = append(c[m], identities...)
	}
	return c
}

// allowed reports whether a client with ids may call method.
func (c Callers) allowed(method string, ids []string) bool {
	for _, p := range open {
		if strings.HasPrefix(method, p) {
			return true
		}
	}
	want, ok := c[method]
	if !ok {
		if want, ok = c[AllMethods]; !ok {
			return false
		}
	}
	if slices.Contains(want, Anyone) {
		return true
	}
	return slices.ContainsFunc(ids, func(id string) bool { return slices.Contains(want, id) })
}

// check refuses a call whose client may not make it. The message names the
// method and the identities the client presented, which it knows anyway.
func (c Callers) check(ctx context.Context, method string) error {
	ids := PeerIdentities(ctx)
	if c.allowed(method, ids) {
		return nil
	}
	who := "a client without a verified certificate"
	if len(ids) > 0 {
		who = "client " + strings.Join(ids, ", ")
	}
	return status.Error(codes.PermissionDenied, fmt.Sprintf("%s may not call %s", who, method))
}

// PeerIdentities returns the DNS and URI subject alternative names and the
// common name of the verified client certificate of the call in ctx, or nil
// when the client presented none.
func PeerIdentities(ctx context.Context) []string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return nil
	}
	// The handshake verified this certificate: NewGRPCServer accepts only
	// TLS configurations that verify client certificates.
	return CertificateIdentities(info.State.PeerCertificates[0])
}

// CertificateIdentities are the names a certificate identifies its holder
// by: its DNS and URI subject alternative names and its common name.
func CertificateIdentities(cert *x509.Certificate) []string {
	ids := slices.Clone(cert.DNSNames)
	for _, u := range cert.URIs {
		ids = append(ids, u.String())
	}
	if cn := cert.Subject.CommonName; cn != "" && !slices.Contains(ids, cn) {
		ids = append(ids, cn)
	}
	return ids
}

// interceptors returns the unary and stream interceptors enforcing c.
func (c Callers) interceptors() (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := c.check(ctx, info.FullMethod); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := c.check(ss.Context(), info.FullMethod); err != nil {
			return err
		}
		return handler(srv, ss)
	}
	return unary, stream
}
