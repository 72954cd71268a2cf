package resolve

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestParsePlatform(t *testing.T) {
	tests := []struct {
		in      string
		want    Platform
		wantErr bool
	}{
		{in: "linux/amd64", want: Platform{OS: "linux", Architecture: "amd64"}},
		{in: " Linux/ARM64/v8 ", want: Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}},
		{in: "linux", wantErr: true},
		{in: "linux/", wantErr: true},
		{in: "/amd64", wantErr: true},
		{in: "linux/arm/", wantErr: true},
		{in: "a/b/c/d", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePlatform(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParsePlatform(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParsePlatform(%q) mismatch (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestWithDefault(t *testing.T) {
	def := Platform{OS: "linux", Architecture: "arm", Variant: "v7"}
	tests := []struct {
		name         string
		in           Platform
		want         Platform
		wantExplicit bool
	}{
		{name: "empty takes the default", want: def},
		{name: "architecture only keeps any variant", in: Platform{Architecture: "ARM64"}, want: Platform{OS: "linux", Architecture: "arm64"}, wantExplicit: true},
		{name: "os only takes the default architecture and variant", in: Platform{OS: "windows"}, want: Platform{OS: "windows", Architecture: "arm", Variant: "v7"}, wantExplicit: true},
		{name: "full", in: Platform{OS: "linux", Architecture: "arm", Variant: "v6"}, want: Platform{OS: "linux", Architecture: "arm", Variant: "v6"}, wantExplicit: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, explicit := tt.in.withDefault(def)
			if diff := cmp.Diff(tt.want, got); diff != "" || explicit != tt.wantExplicit {
				t.Errorf("withDefault() = %v, %v; want %v, %v", got, explicit, tt.want, tt.wantExplicit)
			}
		})
	}
}

func TestChoose(t *testing.T) {
	desc := func(digest, os, arch, variant string) v1.Descriptor {
		return v1.Descriptor{Digest: v1.Hash{Algorithm: "sha256", Hex: digest}, Platform: &v1.Platform{OS: os, Architecture: arch, Variant: variant}}
	}
	index := []v1.Descriptor{
		desc("a", "linux", "amd64", ""),
		desc("b", "linux", "arm", "v6"),
		desc("c", "linux", "arm", "v7"),
		desc("d", "linux", "arm64", "v8"),
		desc("e", "unknown", "unknown", ""),
		{Digest: v1.Hash{Algorithm: "sha256", Hex: "f"}},
	}
	tests := []struct {
		want   Platform
		digest string // "" for no match
	}{
		{want: Platform{OS: "linux", Architecture: "amd64"}, digest: "a"},
		{want: Platform{OS: "linux", Architecture: "arm64"}, digest: "d"},
		{want: Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, digest: "d"},
		{want: Platform{OS: "linux", Architecture: "arm"}, digest: "c"}, // arm means arm/v7
		{want: Platform{OS: "linux", Architecture: "arm", Variant: "v6"}, digest: "b"},
		{want: Platform{OS: "linux", Architecture: "arm64", Variant: "v9"}},
		{want: Platform{OS: "windows", Architecture: "amd64"}},
	}
	for _, tt := range tests {
		t.Run(tt.want.String(), func(t *testing.T) {
			got, ok := choose(index, tt.want)
			if ok != (tt.digest != "") || (ok && got.Digest.Hex != tt.digest) {
				t.Errorf("choose(%s) = %s, %v; want %q", tt.want, got.Digest.Hex, ok, tt.digest)
			}
		})
	}
	if got, want := platformList(indexPlatforms(index)), "linux/amd64, linux/arm/v6, linux/arm/v7, linux/arm64/v8"; got != want {
		t.Errorf("indexPlatforms() = %q, want %q (attestation and platform-less entries left out)", got, want)
	}
}
