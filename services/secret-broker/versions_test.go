package main

import (
	"net/http"
	"strings"
	"testing"
)

// TestMissingVersionsAndEmptyPathsAreNamed: when a secret exists but the
// version stage or id the pod asked for does not, the answer names the
// secret and that version; an SSM path without parameters names the path.
// What piggy-env prints is this message (its process tests check that it
// passes the broker's message on).
func TestMissingVersionsAndEmptyPathsAreNamed(t *testing.T) {
	w := newWorld(t, worldOptions{})
	ns := w.namespace("team-versions-", "web")
	name := ns + "/web"
	w.seed(name, map[string]string{"db": secretValue("versions")})
	const missingID = "0b5d7a1e-3f4c-4e8a-9d2b-6c1f0e9a8b7d"
	for _, tc := range []struct {
		test        string
		annotations map[string]string
		want        []string
	}{
		{"missing version stage", map[string]string{"aws-secret-name": name, "aws-secret-version": "AWSPREVIOUS"},
			[]string{name, "version AWSPREVIOUS"}},
		{"missing version id", map[string]string{"aws-secret-name": name, "aws-secret-version": missingID},
			[]string{name, "version " + missingID}},
		{"SSM path without parameters", map[string]string{"aws-ssm-parameter-path": "/" + ns + "/empty"},
			[]string{"/" + ns + "/empty"}},
	} {
		t.Run(tc.test, func(t *testing.T) {
			pod, ctr := w.launchedPod(ns, strings.ToLower(strings.ReplaceAll(tc.test, " ", "-")), "web", tc.annotations, "db")
			got := w.getSecrets(t, w.podToken(pod), ctr, "db")
			if got.Status != http.StatusNotFound {
				t.Fatalf("answer = %+v, want 404", got)
			}
			for _, want := range tc.want {
				if !strings.Contains(got.Message, want) {
					t.Errorf("message %q does not name %q", got.Message, want)
				}
			}
		})
	}
}
