// Package buildinfo says which build of a Piggy binary is running: the
// version set at build time (-ldflags "-X main.version=..."), the Go
// release and, for builds from a checkout, the source revision. It uses
// the standard library only, so piggy-env links it too.
package buildinfo

import (
	"runtime"
	"runtime/debug"
	"strings"
)

// Info describes one build.
type Info struct {
	// Version is the release version, "dev" for builds without one.
	Version string
	// GoVersion is the Go release the binary was built with.
	GoVersion string
	// Revision is the source revision (empty when unknown), and Modified
	// whether the checkout had uncommitted changes.
	Revision string
	Modified bool
}

// Read returns the build of the running binary whose release version is
// version.
func Read(version string) Info {
	info := Info{Version: version, GoVersion: runtime.Version()}
	if info.Version == "" {
		info.Version = "dev"
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				info.Revision = s.Value
			case "vcs.modified":
				info.Modified = s.Value == "true"
			}
		}
	}
	return info
}

// String is the line --version prints after the binary's name:
// "1.2.0 (go1.26.8, revision 0123456789ab)".
func (i Info) String() string {
	details := []string{i.GoVersion}
	if i.Revision != "" {
		rev := i.Revision
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if i.Modified {
			rev += ", modified"
		}
		details = append(details, "revision "+rev)
	}
	return i.Version + " (" + strings.Join(details, ", ") + ")"
}

// Requested reports whether args ask only for the version (--version or
// -version), which a binary answers before reading any other setting.
func Requested(args []string) bool {
	return len(args) == 1 && (args[0] == "--version" || args[0] == "-version")
}
