package resolve

import (
	"fmt"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Platform selects one image of a multi-platform index.
type Platform struct {
	// OS is the operating system, e.g. "linux".
	OS string
	// Architecture is the CPU architecture, e.g. "amd64" or "arm64".
	Architecture string
	// Variant is the optional architecture variant, e.g. "v8".
	Variant string
}

// ParsePlatform parses "os/architecture[/variant]".
func ParsePlatform(s string) (Platform, error) {
	parts := strings.Split(strings.ToLower(strings.TrimSpace(s)), "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" || (len(parts) == 3 && parts[2] == "") {
		return Platform{}, fmt.Errorf("platform %q is not os/architecture[/variant]", s)
	}
	p := Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

// String formats p as os/architecture[/variant].
func (p Platform) String() string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// IsZero reports whether no field is set.
func (p Platform) IsZero() bool { return p == Platform{} }

// withDefault fills empty fields of p from def. The variant comes from def
// only when the architecture does too: "arm64" asks for any arm64 variant.
// explicit reports whether the request chose a platform at all.
func (p Platform) withDefault(def Platform) (effective Platform, explicit bool) {
	explicit = p.OS != "" || p.Architecture != ""
	if p.OS == "" {
		p.OS = def.OS
	}
	if p.Architecture == "" {
		p.Architecture = def.Architecture
		if p.Variant == "" {
			p.Variant = def.Variant
		}
	}
	return Platform{OS: strings.ToLower(p.OS), Architecture: strings.ToLower(p.Architecture), Variant: strings.ToLower(p.Variant)}, explicit
}

// defaultVariants are the variants a platform without one means, as in
// containerd's platform normalisation.
var defaultVariants = map[string]string{"arm64": "v8", "arm": "v7"}

func normVariant(arch, variant string) string {
	if variant == "" {
		return defaultVariants[arch]
	}
	return variant
}

// satisfiedBy reports whether an image built for have runs where p is
// wanted. A wanted platform without a variant accepts every variant.
func (p Platform) satisfiedBy(have Platform) bool {
	if !strings.EqualFold(have.OS, p.OS) || !strings.EqualFold(have.Architecture, p.Architecture) {
		return false
	}
	return p.Variant == "" || normVariant(p.Architecture, strings.ToLower(have.Variant)) == normVariant(p.Architecture, p.Variant)
}

func fromV1(p *v1.Platform) Platform {
	if p == nil {
		return Platform{}
	}
	return Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant}
}

func (p Platform) v1() v1.Platform {
	return v1.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant}
}

// indexPlatforms lists the runnable platforms of an index, in index order,
// leaving out attestation and other non-image entries.
func indexPlatforms(manifests []v1.Descriptor) []Platform {
	var out []Platform
	for _, d := range manifests {
		if d.Platform == nil || d.Platform.OS == "" || d.Platform.OS == "unknown" {
			continue
		}
		out = append(out, fromV1(d.Platform))
	}
	return out
}

// choose picks the index entry for want: an entry whose variant is the
// wanted (or the architecture's default) variant first, then any entry
// that satisfies want, in index order.
func choose(manifests []v1.Descriptor, want Platform) (v1.Descriptor, bool) {
	var fallback *v1.Descriptor
	for i, d := range manifests {
		have := fromV1(d.Platform)
		if d.Platform == nil || !want.satisfiedBy(have) {
			continue
		}
		if normVariant(want.Architecture, strings.ToLower(have.Variant)) == normVariant(want.Architecture, want.Variant) {
			return d, true
		}
		if fallback == nil {
			fallback = &manifests[i]
		}
	}
	if fallback != nil {
		return *fallback, true
	}
	return v1.Descriptor{}, false
}

func platformList(ps []Platform) string {
	if len(ps) == 0 {
		return "none"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}
