package grpcapi_test

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"
	"k8s.io/apimachinery/pkg/runtime"

	imageresolverv1 "github.com/piggysec/piggy/libs/gen/piggy/imageresolver/v1"
	"github.com/piggysec/piggy/libs/registrytest"
)

const (
	user     = "puller"
	password = "s3cr3t-pass-123"
	ns       = "team"
)

// fixture is one public and one basic-auth registry with the test images,
// and the Kubernetes objects that grant access to the private one.
type fixture struct {
	pub, priv *registrytest.Registry
	digests   map[string]string
	objs      []runtime.Object
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{
		pub:     registrytest.New(t, registrytest.Options{}),
		priv:    registrytest.New(t, registrytest.Options{Username: user, Password: password}),
		digests: map[string]string{},
	}
	push := func(reg *registrytest.Registry, repoTag, platform string, entrypoint, cmd []string) {
		f.digests[repoTag] = reg.Push(t, repoTag, registrytest.Image(t, platform, entrypoint, cmd)).String()
	}
	push(f.pub, "app/entrypoint:1", "linux/amd64", []string{"/bin/app"}, nil)
	push(f.pub, "app/cmd:1", "linux/amd64", nil, []string{"serve", "--port=80"})
	push(f.pub, "app/both:1", "linux/amd64", []string{"/bin/app"}, []string{"--port=80"})
	push(f.pub, "app/arm64only:1", "linux/arm64/v8", []string{"/bin/arm64-only"}, nil)

	amd := registrytest.Image(t, "linux/amd64", []string{"/bin/amd64"}, []string{"run"})
	arm := registrytest.Image(t, "linux/arm64/v8", []string{"/bin/arm64"}, []string{"run"})
	f.pub.PushIndex(t, "app/multi:1", registrytest.Index(t, amd, arm))
	ad, _ := amd.Digest()
	armd, _ := arm.Digest()
	f.digests["multi/amd64"], f.digests["multi/arm64"] = ad.String(), armd.String()
	armv7 := registrytest.Image(t, "linux/arm/v7", []string{"/bin/armv7"}, nil)
	f.pub.PushIndex(t, "app/armonly:1", registrytest.Index(t, arm, armv7))

	push(f.priv, "private/app:1", "linux/amd64", []string{"/bin/private"}, []string{"--secret-flag"})
	f.objs = []runtime.Object{
		registrytest.DockerConfigJSONSecret(ns, "regcred", f.priv.Host, user, password),
		registrytest.DockercfgSecret(ns, "regcfg", f.priv.Host, user, password),
		registrytest.DockerConfigJSONSecret(ns, "wrongcred", f.priv.Host, user, "not-the-password"),
		registrytest.DockerConfigJSONSecret("other", "shared", f.priv.Host, user, password),
		registrytest.ServiceAccount(ns, "builder", "regcred"),
		registrytest.ServiceAccount(ns, "default"),
		registrytest.ServiceAccount(ns, "fallback", "missing", "wrongcred", "regcred"),
	}
	opaque := registrytest.DockerConfigJSONSecret(ns, "opaque", f.priv.Host, user, password)
	opaque.Type = "Opaque"
	f.objs = append(f.objs, opaque)
	return f
}

func platform(os, arch, variant string) *imageresolverv1.Platform {
	return &imageresolverv1.Platform{Os: os, Architecture: arch, Variant: variant}
}

func secrets(names ...string) []*imageresolverv1.SecretReference {
	var out []*imageresolverv1.SecretReference
	for _, n := range names {
		nsName, name, ok := strings.Cut(n, "/")
		if !ok {
			nsName, name = "", n
		}
		out = append(out, &imageresolverv1.SecretReference{Namespace: nsName, Name: name})
	}
	return out
}

func TestResolveImage(t *testing.T) {
	f := newFixture(t)
	amd64 := platform("linux", "amd64", "")
	tests := []struct {
		name     string
		req      *imageresolverv1.ResolveImageRequest
		want     *imageresolverv1.ResolveImageResponse
		wantCode codes.Code
		wantMsg  []string // substrings of the status message
	}{
		{
			name: "entrypoint only",
			req:  &imageresolverv1.ResolveImageRequest{Image: f.pub.Ref("app/entrypoint:1"), Namespace: ns},
			want: &imageresolverv1.ResolveImageResponse{Digest: f.digests["app/entrypoint:1"], Entrypoint: []string{"/bin/app"}, Platform: amd64},
		},
		{
			name: "cmd only",
			req:  &imageresolverv1.ResolveImageRequest{Image: f.pub.Ref("app/cmd:1"), Namespace: ns},
			want: &imageresolverv1.ResolveImageResponse{Digest: f.digests["app/cmd:1"], Cmd: []string{"serve", "--port=80"}, Platform: amd64},
		},
		{
			name: "entrypoint and cmd",
			req:  &imageresolverv1.ResolveImageRequest{Image: f.pub.Ref("app/both:1"), Namespace: ns},
			want: &imageresolverv1.ResolveImageResponse{Digest: f.digests["app/both:1"], Entrypoint: []string{"/bin/app"}, Cmd: []string{"--port=80"}, Platform: amd64},
		},
		{
			name: "by digest",
			req:  &imageresolverv1.ResolveImageRequest{Image: f.pub.Ref("app/both@" + f.digests["app/both:1"]), Namespace: ns},
			want: &imageresolverv1.ResolveImageResponse{Digest: f.digests["app/both:1"], Entrypoint: []string{"/bin/app"}, Cmd: []string{"--port=80"}, Platform: amd64},
		},
		{
			name: "index with the default platform",
			req:  &imageresolverv1.ResolveImageRequest{Image: f.pub.Ref("app/multi:1"), Namespace: ns},
			want: &imageresolverv1.ResolveImageResponse{Digest: f.digests["multi/amd64"], Entrypoint: []string{"/bin/amd64"}, Cmd: []string{"run"}, Platform: amd64},
		},
		{
			name: "index with arm64 requested",
			req:  &imageresolverv1.ResolveImageRequest{Image: f.pub.Ref("app/multi:1"), Namespace: ns, Platform: platform("linux", "arm64", "")},
			want: &imageresolverv1.ResolveImageResponse{Digest: f.digests["multi/arm64"], Entrypoint: []string{"/bin/arm64"}, Cmd: []string{"run"}, Platform: platform("linux", "arm64", "v8")},
		},
		{
			name: "index with arm64/v8 requested, os from the default",
			req:  &imageresolverv1.ResolveImageRequest{Image: f.pub.Ref("app/multi:1"), Namespace: ns, Platform: platform("", "arm64", "v8")},
			want: &imageresolverv1.ResolveImageResponse{Digest: f.digests["multi/arm64"], Entrypoint: []string{"/bin/arm64"}, Cmd: []string{"run"}, Platform: platform("linux", "arm64", "v8")},
		},
		{
			name:     "index without the requested platform lists its platforms",
			req:      &imageresolverv1.ResolveImageRequest{Image: f.pub.Ref("app/multi:1"), Namespace: ns, Platform: platform("windows", "amd64", "")},
			wantCode: codes.FailedPrecondition,
			wantMsg:  []string{"no manifest for windows/amd64", "available: linux/amd64, linux/arm64/v8"},
		},
		{
			name:     "arm-only index without the default platform",
			req:      &imageresolverv1.ResolveImageRequest{Image: f.pub.Ref("app/armonly:1"), Namespace: ns},
			wantCode: codes.FailedPrecondition,
			wantMsg:  []string{"no manifest for linux/amd64", "available: linux/arm64/v8, linux/arm/v7"},
		},
		{
			name: "arm-only index with arm/v7 requested",
			req:  &imageresolverv1.ResolveImageRequest{Image: f.pub.Ref("app/armonly:1"), Namespace: ns, Platform: platform("linux", "arm", "v7")},
			want: &imageresolverv1.ResolveImageResponse{Digest: mustDigest(t, f.pub, "app/armonly:1", "linux/arm/v7"), Entrypoint: []string{"/bin/armv7"}, Platform: platform("linux", "arm", "v7")},
		},
		{
			name: "arm64-only image with arm64 requested",
			req:  &imageresolverv1.ResolveImageRequest{Image: f.pub.Ref("app/arm64only:1"), Namespace: ns, Platform: platform("linux", "arm64", "")},
			want: &imageresolverv1.ResolveImageResponse{Digest: f.digests["app/arm64only:1"], Entrypoint: []string{"/bin/arm64-only"}, Platform: platform("linux", "arm64", "v8")},
		},
		{
			name: "arm64-only image with the default platform is accepted",
			req:  &imageresolverv1.ResolveImageRequest{Image: f.pub.Ref("app/arm64only:1"), Namespace: ns},
			want: &imageresolverv1.ResolveImageResponse{Digest: f.digests["app/arm64only:1"], Entrypoint: []string{"/bin/arm64-only"}, Platform: platform("linux", "arm64", "v8")},
		},
		{
			name:     "arm64-only image with amd64 requested explicitly",
			req:      &imageresolverv1.ResolveImageRequest{Image: f.pub.Ref("app/arm64only:1"), Namespace: ns, Platform: amd64},
			wantCode: codes.FailedPrecondition,
			wantMsg:  []string{"single-platform image for linux/arm64/v8", "available: linux/arm64/v8"},
		},
		{
			name: "private image through a request pull secret",
			req:  &imageresolverv1.ResolveImageRequest{Image: f.priv.Ref("private/app:1"), Namespace: ns, PullSecrets: secrets("regcred")},
			want: &imageresolverv1.ResolveImageResponse{Digest: f.digests["private/app:1"], Entrypoint: []string{"/bin/private"}, Cmd: []string{"--secret-flag"}, Platform: amd64},
		},
		{
			name: "private image through a kubernetes.io/dockercfg secret",
			req:  &imageresolverv1.ResolveImageRequest{Image: f.priv.Ref("private/app:1"), Namespace: ns, PullSecrets: secrets("regcfg")},
			want: &imageresolverv1.ResolveImageResponse{Digest: f.digests["private/app:1"], Entrypoint: []string{"/bin/private"}, Cmd: []string{"--secret-flag"}, Platform: amd64},
		},
		{
			name: "private image through the service account's imagePullSecrets",
			req:  &imageresolverv1.ResolveImageRequest{Image: f.priv.Ref("private/app:1"), Namespace: ns, ServiceAccount: "builder"},
			want: &imageresolverv1.ResolveImageResponse{Digest: f.digests["private/app:1"], Entrypoint: []string{"/bin/private"}, Cmd: []string{"--secret-flag"}, Platform: amd64},
		},
		{
			name: "missing pull secret is skipped, the service account's works",
			req:  &imageresolverv1.ResolveImageRequest{Image: f.priv.Ref("private/app:1"), Namespace: ns, ServiceAccount: "builder", PullSecrets: secrets("does-not-exist")},
			want: &imageresolverv1.ResolveImageResponse{Digest: f.digests["private/app:1"], Entrypoint: []string{"/bin/private"}, Cmd: []string{"--secret-flag"}, Platform: amd64},
		},
		{
			name: "wrong credentials first, then the right ones (kubelet order)",
			req:  &imageresolverv1.ResolveImageRequest{Image: f.priv.Ref("private/app:1"), Namespace: ns, ServiceAccount: "fallback"},
			want: &imageresolverv1.ResolveImageResponse{Digest: f.digests["private/app:1"], Entrypoint: []string{"/bin/private"}, Cmd: []string{"--secret-flag"}, Platform: amd64},
		},
		{
			name:     "missing pull secret and no other credentials",
			req:      &imageresolverv1.ResolveImageRequest{Image: f.priv.Ref("private/app:1"), Namespace: ns, PullSecrets: secrets("does-not-exist")},
			wantCode: codes.Unauthenticated,
			wantMsg:  []string{f.priv.Host, "401"},
		},
		{
			name:     "anonymous against a private registry",
			req:      &imageresolverv1.ResolveImageRequest{Image: f.priv.Ref("private/app:1"), Namespace: ns},
			wantCode: codes.Unauthenticated,
		},
		{
			name:     "wrong credentials",
			req:      &imageresolverv1.ResolveImageRequest{Image: f.priv.Ref("private/app:1"), Namespace: ns, PullSecrets: secrets("wrongcred")},
			wantCode: codes.Unauthenticated,
			wantMsg:  []string{"did not accept the credentials"},
		},
		{
			name:     "secret of another type is ignored",
			req:      &imageresolverv1.ResolveImageRequest{Image: f.priv.Ref("private/app:1"), Namespace: ns, PullSecrets: secrets("opaque")},
			wantCode: codes.Unauthenticated,
		},
		{
			name:     "unknown tag",
			req:      &imageresolverv1.ResolveImageRequest{Image: f.pub.Ref("app/both:does-not-exist"), Namespace: ns},
			wantCode: codes.NotFound,
			wantMsg:  []string{"app/both:does-not-exist", "not found"},
		},
		{
			name:     "unknown repository",
			req:      &imageresolverv1.ResolveImageRequest{Image: f.pub.Ref("nothing/here:1"), Namespace: ns},
			wantCode: codes.NotFound,
		},
		{
			name:     "bad reference",
			req:      &imageresolverv1.ResolveImageRequest{Image: "Not A Reference::", Namespace: ns},
			wantCode: codes.InvalidArgument,
			wantMsg:  []string{"is invalid"},
		},
		{
			name:     "empty reference",
			req:      &imageresolverv1.ResolveImageRequest{Namespace: ns},
			wantCode: codes.InvalidArgument,
		},
		{
			name:     "variant without architecture",
			req:      &imageresolverv1.ResolveImageRequest{Image: f.pub.Ref("app/multi:1"), Platform: platform("", "", "v8")},
			wantCode: codes.InvalidArgument,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := newResolver(t, pool(f.pub, f.priv), f.objs)
			client := serveGRPC(t, r)
			got, err := client.ResolveImage(t.Context(), tt.req)
			if c := status.Code(err); c != tt.wantCode {
				t.Fatalf("ResolveImage() code = %v (%v), want %v", c, err, tt.wantCode)
			}
			msg := status.Convert(err).Message()
			for _, w := range tt.wantMsg {
				if !strings.Contains(msg, w) {
					t.Errorf("message %q does not contain %q", msg, w)
				}
			}
			if strings.Contains(msg, password) || strings.Contains(msg, "not-the-password") {
				t.Errorf("message %q leaks a password", msg)
			}
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("ResolveImage() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func mustDigest(t *testing.T, reg *registrytest.Registry, repoTag, platform string) string {
	t.Helper()
	r, _ := newResolver(t, reg.CertPool(), nil)
	p := strings.Split(platform, "/")
	req := &imageresolverv1.ResolveImageRequest{Image: reg.Ref(repoTag), Platform: platform3(p)}
	res, err := serveGRPC(t, r).ResolveImage(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return res.GetDigest()
}

func platform3(p []string) *imageresolverv1.Platform {
	out := &imageresolverv1.Platform{Os: p[0], Architecture: p[1]}
	if len(p) > 2 {
		out.Variant = p[2]
	}
	return out
}
