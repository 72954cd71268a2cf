package grpcapi_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	imageresolverv1 "github.com/piggysec/piggy/libs/gen/piggy/imageresolver/v1"
	"github.com/piggysec/piggy/libs/registrytest"
	"github.com/piggysec/piggy/services/image-resolver/internal/resolve"
)

// TestOversizedImages: manifests and configs over the resolver's limits
// are refused with a message naming the limit, whether the registry
// declares the size (refused before reading) or streams it (refused
// while reading). The memory this bounds is measured by the service's
// TestMemoryUnderHugeConfigs.
func TestOversizedImages(t *testing.T) {
	const manifestLimit, configLimit = 64 << 10, 16 << 10
	reg := registrytest.New(t, registrytest.Options{})
	big, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{OS: "linux", Architecture: "amd64", Config: v1.Config{
		Entrypoint: []string{"/bin/app"}, Env: []string{"PADDING=" + strings.Repeat("x", configLimit)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	reg.Push(t, "big/config:1", big)
	bigSize, _ := big.RawConfigFile()
	padded := func(mediaType string) []byte {
		b, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": mediaType, "annotations": map[string]string{"padding": strings.Repeat("x", manifestLimit)}})
		return b
	}
	reg.ServeRawManifest("big/manifest:1", "application/vnd.oci.image.manifest.v1+json", padded("application/vnd.oci.image.manifest.v1+json"))
	reg.ServeRawManifestUnsized("big/streamed:1", "application/vnd.oci.image.manifest.v1+json", padded("application/vnd.oci.image.manifest.v1+json"))
	index, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
		"manifests": []map[string]any{{
			"mediaType": "application/vnd.oci.image.manifest.v1+json",
			"digest":    "sha256:" + strings.Repeat("ab", 32),
			"size":      manifestLimit + 1,
			"platform":  map[string]string{"os": "linux", "architecture": "amd64"},
		}},
	})
	reg.ServeRawManifest("big/index:1", "application/vnd.oci.image.index.v1+json", index)
	reg.Push(t, "small/app:1", registrytest.Image(t, "linux/amd64", []string{"/bin/small"}, nil))

	r, _ := newResolver(t, pool(reg), nil, func(o *resolve.Options) {
		o.MaxManifestBytes, o.MaxConfigBytes = manifestLimit, configLimit
	})
	client := serveGRPC(t, r)
	manifestBody := len(padded("application/vnd.oci.image.manifest.v1+json"))
	for _, tt := range []struct {
		name, image, want string
	}{
		{"config declared over the limit", "big/config:1", fmt.Sprintf("its config is %d bytes, over the resolver's limit of %d bytes (--max-config-bytes)", len(bigSize), configLimit)},
		{"manifest declared over the limit", "big/manifest:1", fmt.Sprintf("its manifest is %d bytes, over the resolver's limit of %d bytes (--max-manifest-bytes)", manifestBody, manifestLimit)},
		{"manifest streamed over the limit", "big/streamed:1", fmt.Sprintf("its manifest is larger than the resolver's limit of %d bytes (--max-manifest-bytes)", manifestLimit)},
		{"index naming a child over the limit", "big/index:1", fmt.Sprintf("its manifest is %d bytes, over the resolver's limit of %d bytes (--max-manifest-bytes)", manifestLimit+1, manifestLimit)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := client.ResolveImage(t.Context(), &imageresolverv1.ResolveImageRequest{Image: reg.Ref(tt.image)})
			if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), tt.want) {
				t.Errorf("%v, want FailedPrecondition containing %q", err, tt.want)
			}
		})
	}
	if got, err := client.ResolveImage(t.Context(), &imageresolverv1.ResolveImageRequest{Image: reg.Ref("small/app:1")}); err != nil || got.GetEntrypoint()[0] != "/bin/small" {
		t.Errorf("an image within the limits: %v %v", got, err)
	}
}

// TestColdLookupsAreCapped: registry conversations in flight never exceed
// --max-cold-lookups; the others wait for a slot and still succeed.
func TestColdLookupsAreCapped(t *testing.T) {
	const limit, lookups = 2, 6
	reg := registrytest.New(t, registrytest.Options{})
	for i := range lookups {
		reg.Push(t, fmt.Sprintf("app%d:1", i), registrytest.Image(t, "linux/amd64", []string{fmt.Sprintf("/bin/app%d", i)}, nil))
	}
	reg.SetManifestDelay(100 * time.Millisecond)
	r, _ := newResolver(t, pool(reg), nil, func(o *resolve.Options) {
		o.MaxColdLookups, o.Timeout = limit, 30*time.Second
	})
	client := serveGRPC(t, r)
	var wg sync.WaitGroup
	errs := make([]error, lookups)
	for i := range lookups {
		wg.Go(func() {
			_, errs[i] = client.ResolveImage(t.Context(), &imageresolverv1.ResolveImageRequest{Image: reg.Ref(fmt.Sprintf("app%d:1", i))})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("lookup %d: %v", i, err)
		}
	}
	if got := reg.MaxManifestsInFlight(); got > limit || got < 1 {
		t.Errorf("%d manifest requests in flight at once, want 1..%d", got, limit)
	}
}
