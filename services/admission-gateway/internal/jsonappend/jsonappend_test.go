package jsonappend

import (
	"encoding/json"
	"testing"
)

// FuzzString checks the hand-written JSON string encoder against
// encoding/json: both must decode to the same string.
func FuzzString(f *testing.F) {
	for _, s := range []string{"", "plain", `q"b\s`, "\x00\x1f\n\r\t", "ünï \u2028\u2029", "\xff\xfe bad utf8", "<>&"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := String(nil, s)
		var decoded string
		if err := json.Unmarshal(got, &decoded); err != nil {
			t.Fatalf("String(%q) = %s: invalid JSON: %v", s, got, err)
		}
		ref, _ := json.Marshal(s)
		var want string
		if err := json.Unmarshal(ref, &want); err != nil {
			t.Fatal(err)
		}
		if decoded != want {
			t.Fatalf("String(%q) decodes to %q, encoding/json to %q", s, decoded, want)
		}
	})
}
