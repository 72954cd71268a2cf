package podidentity

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSignature(t *testing.T) {
	// printf '/bin/app --port 8080' | sha256sum
	want := "d9b2962bf8c3adc153c1b53d65e2723fa3317a790e46f16155e4059d0acee883"
	got := Signature([]string{"/bin/app", "--port", "8080"})
	if got != want {
		t.Fatalf("Signature = %s, want %s", got, want)
	}
	if got != Signature([]string{" /bin/app --port", "8080 "}) {
		t.Error("signature is not taken over the trimmed, space-joined command line")
	}
	if Signature([]string{"sh"}) == Signature([]string{"sh", "-c", "env"}) {
		t.Error("different command lines share a signature")
	}
	hash := func(s string) string {
		sum := sha256.Sum256([]byte(s))
		return hex.EncodeToString(sum[:])
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"sh", "-c", "echo a  b"}, hash("sh -c echo a  b")},
		{[]string{" app ", "x "}, hash("app  x")},
		{[]string{"app", ""}, hash("app")},
	} {
		if got := Signature(tt.args); got != tt.want {
			t.Errorf("Signature(%q) = %s, want %s", tt.args, got, tt.want)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	ids := Identities{"app": {UID: NewUID(), Signature: Signature([]string{"app"})}, "init": {UID: NewUID(), Signature: "x"}}
	got, err := Parse(ids.Format())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ids, got); diff != "" {
		t.Error(diff)
	}
	if ids.Format() != got.Format() {
		t.Error("Format is not deterministic")
	}
	if _, err := Parse("not json"); err == nil {
		t.Error("Parse accepted garbage")
	}
	if e, err := Parse(""); err != nil || len(e) != 0 {
		t.Errorf("Parse(\"\") = %v, %v", e, err)
	}
}

func TestMatch(t *testing.T) {
	sig := Signature([]string{"/app"})
	ids := Identities{"app": {UID: "u1", Signature: sig}, "blank": {UID: "", Signature: ""}, "nosig": {UID: "u3", Signature: ""}}
	tests := []struct {
		name, uid, sig string
		wantName       string
		uidOK, sigOK   bool
	}{
		{"match", "u1", sig, "app", true, true},
		{"wrong signature", "u1", Signature([]string{"sh"}), "app", true, false},
		{"empty signature", "u1", "", "app", true, false},
		{"unknown uid", "u2", sig, "", false, false},
		{"empty uid never matches a blank entry", "", "", "", false, false},
		{"entry without signature never matches", "u3", "", "nosig", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name, uidOK, sigOK := ids.Match(tt.uid, tt.sig)
			if name != tt.wantName || uidOK != tt.uidOK || sigOK != tt.sigOK {
				t.Errorf("Match = %q, %v, %v; want %q, %v, %v", name, uidOK, sigOK, tt.wantName, tt.uidOK, tt.sigOK)
			}
		})
	}
}
