package refs

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/piggysec/piggy/libs/podgrant"
)

func TestParse(t *testing.T) {
	tests := []struct {
		value   string
		wantKey string
		wantOK  bool
	}{
		{"piggy:KEY", "KEY", true},
		{"piggy:db-password", "db-password", true},
		{"piggy:a:b", "a:b", true},
		{"piggy: spaced", " spaced", true},
		{"piggy:", "", false},
		{"", "", false},
		{"piggy", "", false},
		{"Piggy:KEY", "", false},
		{"PIGGY:KEY", "", false},
		{" piggy:KEY", "", false},
		{"x piggy:KEY", "", false},
		{"https://piggy:KEY@host", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			key, ok := podgrant.ParseReference(tt.value)
			if diff := cmp.Diff(tt.wantKey, key); diff != "" || ok != tt.wantOK {
				t.Errorf("Parse(%q) = %q, %v; want %q, %v", tt.value, key, ok, tt.wantKey, tt.wantOK)
			}
		})
	}
}

func TestFind(t *testing.T) {
	tests := []struct {
		name    string
		environ []string
		want    []Ref
	}{
		{name: "none", environ: []string{"PATH=/bin", "HOME=/root"}, want: nil},
		{
			name:    "name differs from key",
			environ: []string{"PATH=/bin", "DB_PASSWORD=piggy:db-password", "API=piggy:API"},
			want:    []Ref{{Name: "DB_PASSWORD", Key: "db-password"}, {Name: "API", Key: "API"}},
		},
		{
			name:    "two variables one key",
			environ: []string{"A=piggy:K", "B=piggy:K"},
			want:    []Ref{{Name: "A", Key: "K"}, {Name: "B", Key: "K"}},
		},
		{
			name:    "last duplicate wins",
			environ: []string{"A=piggy:old", "B=x", "A=piggy:new"},
			want:    []Ref{{Name: "A", Key: "new"}},
		},
		{
			name:    "duplicate overridden by a plain value",
			environ: []string{"A=piggy:old", "A=plain"},
			want:    nil,
		},
		{
			name:    "piggy variables and malformed entries ignored",
			environ: []string{"PIGGY_UID=piggy:x", "noequals", "=piggy:x", "EMPTY=piggy:", "V=piggy:=x"},
			want:    []Ref{{Name: "V", Key: "=x"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, Find(tt.environ)); diff != "" {
				t.Errorf("Find mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestKeys(t *testing.T) {
	got := Keys([]Ref{{"A", "b"}, {"B", "a"}, {"C", "b"}, {"D", "PIGGY_ALLOWED_SA"}})
	if diff := cmp.Diff([]string{"a", "b"}, got); diff != "" {
		t.Errorf("Keys mismatch (-want +got):\n%s", diff)
	}
}

func TestResolve(t *testing.T) {
	tests := []struct {
		name    string
		environ []string
		values  map[string]string
		want    Result
	}{
		{
			name:    "no references drops PIGGY variables",
			environ: []string{"PATH=/bin", "PIGGY_UID=u", "PIGGY_ADDRESS=https://b", "PIGGYBANK=keep"},
			want:    Result{Env: []string{"PATH=/bin", "PIGGYBANK=keep"}},
		},
		{
			name:    "replaced in place",
			environ: []string{"A=1", "DB=piggy:db", "B=2", "X=piggy:db"},
			values:  map[string]string{"db": "s3cret=with=equals", "other": "unused"},
			want:    Result{Env: []string{"A=1", "DB=s3cret=with=equals", "B=2", "X=s3cret=with=equals"}},
		},
		{
			name:    "empty value is a value",
			environ: []string{"E=piggy:e"},
			values:  map[string]string{"e": ""},
			want:    Result{Env: []string{"E="}},
		},
		{
			name:    "unresolved left out",
			environ: []string{"A=piggy:a", "B=piggy:b", "C=3"},
			values:  map[string]string{"a": "1"},
			want:    Result{Env: []string{"A=1", "C=3"}, Unresolved: []Ref{{Name: "B", Key: "b"}}},
		},
		{
			name:    "reserved key never given",
			environ: []string{"SA=piggy:PIGGY_ALLOWED_SA"},
			values:  map[string]string{"PIGGY_ALLOWED_SA": "ns:sa"},
			want:    Result{Env: []string{}, Unresolved: []Ref{{Name: "SA", Key: "PIGGY_ALLOWED_SA"}}},
		},
		{
			name:    "reference in a PIGGY variable dropped",
			environ: []string{"PIGGY_X=piggy:x"},
			values:  map[string]string{"x": "1"},
			want:    Result{Env: []string{}},
		},
		{
			name:    "duplicates collapse to the last",
			environ: []string{"A=piggy:a", "A=plain", "B=1", "B=piggy:a"},
			values:  map[string]string{"a": "v"},
			want:    Result{Env: []string{"A=plain", "B=v"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, Resolve(tt.environ, tt.values)); diff != "" {
				t.Errorf("Resolve mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzParse checks the reference rule's invariants on arbitrary values.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"piggy:KEY", "piggy:", "", "piggy", "piggy:piggy:x", "xpiggy:y", "piggy:\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, value string) {
		key, ok := podgrant.ParseReference(value)
		if ok != (strings.HasPrefix(value, Prefix) && len(value) > len(Prefix)) {
			t.Fatalf("Parse(%q) ok = %v", value, ok)
		}
		if ok && Prefix+key != value {
			t.Fatalf("Parse(%q) = %q, which does not rebuild the value", value, key)
		}
		if !ok && key != "" {
			t.Fatalf("Parse(%q) returned key %q with ok = false", value, key)
		}
		// A reference found in an environment must resolve to its value
		// and leave no PIGGY_ variable behind.
		env := []string{"V=" + value, "PIGGY_UID=u"}
		res := Resolve(env, map[string]string{key: "resolved"})
		for _, kv := range res.Env {
			if strings.HasPrefix(kv, Reserved) {
				t.Fatalf("Resolve left %q", kv)
			}
		}
		if ok && !strings.HasPrefix(key, Reserved) {
			if diff := cmp.Diff([]string{"V=resolved"}, res.Env); diff != "" {
				t.Fatalf("Resolve(%q) mismatch (-want +got):\n%s", value, diff)
			}
		}
		if !ok {
			if diff := cmp.Diff([]string{"V=" + value}, res.Env); diff != "" {
				t.Fatalf("Resolve(%q) changed a plain value (-want +got):\n%s", value, diff)
			}
		}
	})
}

// FuzzKeysAreTheGrantedKeys is the differential test of the one reference
// rule: the keys piggy-env asks for in an environment are exactly the keys
// the admission-gateway grants for those variables (podgrant.Reference),
// so a launcher never asks for a key its grant cannot hold.
func FuzzKeysAreTheGrantedKeys(f *testing.F) {
	for _, s := range []string{
		"A=piggy:db\nB=piggy:api",
		"PIGGY_X=piggy:db\nA=piggy:PIGGY_ALLOWED_SA",
		"A=piggy:db\nA=plain\nB=piggy:",
		"A=x piggy:db\n=piggy:k\nnoequals",
		"A=piggy:k\nB=piggy:k\nC=piggy:a:b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, lines string) {
		environ := strings.Split(lines, "\n")
		var granted []string
		for _, kv := range Dedup(environ) {
			name, value, _ := strings.Cut(kv, "=")
			if name == "" {
				continue
			}
			if key, ok := podgrant.Reference(name, value); ok {
				granted = append(granted, key)
			}
		}
		slices.Sort(granted)
		granted = slices.Compact(granted)
		if granted == nil {
			granted = []string{}
		}
		if diff := cmp.Diff(granted, Keys(Find(environ))); diff != "" {
			t.Fatalf("environment %q: asked-for keys differ from granted keys (-granted +asked):\n%s", environ, diff)
		}
	})
}
