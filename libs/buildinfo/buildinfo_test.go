package buildinfo

import (
	"runtime"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	if got := Read("").Version; got != "dev" {
		t.Errorf("Read(\"\").Version = %q, want dev", got)
	}
	i := Read("1.2.0")
	if i.Version != "1.2.0" || i.GoVersion != runtime.Version() {
		t.Errorf("Read = %+v", i)
	}
	if s := i.String(); !strings.HasPrefix(s, "1.2.0 ("+runtime.Version()) {
		t.Errorf("String = %q", s)
	}
	withRev := Info{Version: "dev", GoVersion: "go1.26", Revision: "0123456789abcdef", Modified: true}
	if got, want := withRev.String(), "dev (go1.26, revision 0123456789ab, modified)"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
}

func TestRequested(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"-version"}} {
		if !Requested(args) {
			t.Errorf("Requested(%q) = false", args)
		}
	}
	for _, args := range [][]string{nil, {"--version", "--debug"}, {"--", "--version"}, {"version"}} {
		if Requested(args) {
			t.Errorf("Requested(%q) = true", args)
		}
	}
}
