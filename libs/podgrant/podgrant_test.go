package podgrant

import (
	"slices"
	"testing"
)

func TestRoundTripAndAllows(t *testing.T) {
	g := New(Source{Kind: SecretsManager, Name: "team/app", Region: "eu-west-1"}, true, false, []string{"b", "a", "b"})
	if !slices.Equal(g.Keys, []string{"a", "b"}) {
		t.Fatalf("keys = %q, want sorted and distinct", g.Keys)
	}
	got, err := Parse(g.Format())
	if err != nil {
		t.Fatal(err)
	}
	if got.Format() != g.Format() || !got.Allows("a") || got.Allows("c") || got.Allows("") {
		t.Errorf("round trip = %+v", got)
	}
	if d := g.SameSettings(New(Source{Kind: SecretsManager, Name: "team/other", Region: "eu-west-1"}, true, false, nil)); d == "" {
		t.Error("another source has the same settings")
	}
	if d := g.SameSettings(New(g.Source, true, false, []string{"z"})); d != "" {
		t.Errorf("keys count as settings: %s", d)
	}
}

func TestParseRefuses(t *testing.T) {
	for _, v := range []string{"", "{", `{"v":2,"source":{"kind":"ssm","name":"/a"}}`, `{"v":1,"source":{"kind":"s3","name":"x"}}`, `{"v":1,"source":{"kind":"ssm"}}`} {
		if _, err := Parse(v); err == nil {
			t.Errorf("Parse(%q) accepted", v)
		}
	}
}

func TestReference(t *testing.T) {
	tests := []struct {
		name, value, key string
		ok               bool
	}{
		{"DB", "piggy:db", "db", true},
		{"DB", "piggy:", "", false},
		{"DB", "xpiggy:db", "", false},
		{"PIGGY_X", "piggy:db", "", false},
		{"DB", "piggy:PIGGY_ALLOWED_SA", "", false},
	}
	for _, tt := range tests {
		if key, ok := Reference(tt.name, tt.value); key != tt.key || ok != tt.ok {
			t.Errorf("Reference(%q, %q) = %q, %t", tt.name, tt.value, key, ok)
		}
	}
}
