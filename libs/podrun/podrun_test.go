package podrun

import "testing"

func TestMapPath(t *testing.T) {
	mounts := []mount{
		{path: "/var/run/secrets/piggysec.com/serviceaccount", host: "/h/token"},
		{path: "/piggy", host: "/h/piggy"},
	}
	tests := map[string]string{
		"/piggy/piggy-env": "/h/piggy/piggy-env",
		"/piggy":           "/h/piggy",
		"/piggyback":       "/piggyback",
		"/var/run/secrets/piggysec.com/serviceaccount/token": "/h/token/token",
		"piggy:KEY": "piggy:KEY",
		"":          "",
	}
	for in, want := range tests {
		if got := mapPath(in, mounts); got != want {
			t.Errorf("mapPath(%q) = %q, want %q", in, got, want)
		}
	}
}
