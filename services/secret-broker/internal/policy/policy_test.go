package policy

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/piggysec/piggy/libs/glob"
	"github.com/piggysec/piggy/libs/logging"
)

var teamA = Caller{Namespace: "team-a", ServiceAccount: "web"}

func defaultRules() Rules {
	return Rules{SecretsManager: DefaultSecretsManagerPatterns, SSM: DefaultSSMPatterns}
}

func TestByName(t *testing.T) {
	tests := []struct {
		name   string
		rules  Rules
		kind   Kind
		secret string
		want   bool
	}{
		{"default name", defaultRules(), SecretsManager, "team-a/web", true},
		{"namespace pattern", defaultRules(), SecretsManager, "team-a/other/db", true},
		{"other namespace", defaultRules(), SecretsManager, "team-b/web", false},
		{"namespace name as prefix of another", defaultRules(), SecretsManager, "team-ab/web", false},
		{"no slash", defaultRules(), SecretsManager, "team-a", false},
		{"arn is not a name", defaultRules(), SecretsManager, "arn:aws:secretsmanager:eu-west-3:123456789012:secret:team-a/web-AbCdEf", false},
		{"operator prefix in default name", Rules{DefaultPrefix: "prod/", DefaultSuffix: "/env"}, SecretsManager, "prod/team-a/web/env", true},
		{"default name without the operator prefix", Rules{DefaultPrefix: "prod/"}, SecretsManager, "team-a/web", false},
		// A pod that sets its own prefix "prod" in namespace "a" would name
		// namespace "proda"'s default secret: never allowed by the name.
		{"pod-chosen prefix reaching another namespace", Rules{}, SecretsManager, "proda/web", false},
		{"no patterns", Rules{}, SecretsManager, "team-a/db", false},
		{"service account placeholder", Rules{SecretsManager: []string{"apps/{namespace}/{serviceaccount}-*"}}, SecretsManager, "apps/team-a/web-db", true},
		{"service account placeholder other sa", Rules{SecretsManager: []string{"apps/{namespace}/{serviceaccount}-*"}}, SecretsManager, "apps/team-a/api-db", false},
		{"question mark", Rules{SecretsManager: []string{"{namespace}/db-?"}}, SecretsManager, "team-a/db-1", true},
		{"ssm namespace path", defaultRules(), SSMParameterPath, "/team-a/web", true},
		{"ssm namespace root", defaultRules(), SSMParameterPath, "/team-a", true},
		{"ssm other namespace", defaultRules(), SSMParameterPath, "/team-b/web", false},
		{"ssm sibling namespace", defaultRules(), SSMParameterPath, "/team-ab", false},
		{"ssm root", defaultRules(), SSMParameterPath, "/", false},
		{"default name is no ssm path", defaultRules(), SSMParameterPath, "team-a/web", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.rules.ByName(teamA, tt.kind, tt.secret)
			if got.Allowed != tt.want || got.Reason == "" {
				t.Errorf("ByName(%q) = %+v, want allowed=%v with a reason", tt.secret, got, tt.want)
			}
		})
	}
}

func TestDecide(t *testing.T) {
	allowed := NameDecision{Allowed: true, Reason: "name ok"}
	outside := NameDecision{Reason: "name outside"}
	tests := []struct {
		name    string
		byName  NameDecision
		list    AllowList
		enforce bool
		want    bool
	}{
		{"name allows, no list", allowed, AllowList{}, false, true},
		{"name refuses, no list", outside, AllowList{}, false, false},
		{"list grants outside the name rules", outside, ParseAllowList("team-b:api, team-a:web"), false, true},
		{"list restricts inside the name rules", allowed, ParseAllowList("team-a:api"), false, false},
		{"list with spaces and empty entries", outside, ParseAllowList(" , team-a:web ,"), false, true},
		{"list needs exact entries", allowed, ParseAllowList("team-a:*"), false, false},
		{"invalid list refuses everyone", allowed, AllowList{Present: true}, false, false},
		{"enforce without list", allowed, AllowList{}, true, false},
		{"enforce with listing list", allowed, ParseAllowList("team-a:web"), true, true},
		{"enforce with other list", allowed, ParseAllowList("team-b:web"), true, false},
		{"empty list lists nobody", allowed, ParseAllowList(""), false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Decide(teamA, tt.byName, tt.list, tt.enforce)
			if got.Allowed != tt.want || len(got.Reasons) == 0 {
				t.Errorf("Decide = %+v, want allowed=%v with reasons", got, tt.want)
			}
		})
	}
}

func TestSelect(t *testing.T) {
	values := map[string]logging.Secret{"db": "pw", "port": "5432", "PIGGY_ALLOWED_SA": "team-a:web", "PIGGY_UID": "x", "extra": "not asked"}
	invalid := map[string]string{"nested": "holds a JSON object"}
	got, err := Select([]string{"port", "db", "missing", "PIGGY_ALLOWED_SA", "PIGGY_UID", "db", "also-missing"}, values, invalid)
	if err != nil {
		t.Fatal(err)
	}
	want := Selection{
		Values:  map[string]logging.Secret{"db": "pw", "port": "5432"},
		Missing: []string{"PIGGY_ALLOWED_SA", "PIGGY_UID", "also-missing", "missing"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Select (-want +got):\n%s", diff)
	}

	_, err = Select([]string{"db", "nested"}, values, invalid)
	var ike *InvalidKeyError
	if !errors.As(err, &ike) || ike.Key != "nested" {
		t.Errorf("Select of an invalid key = %v, want an InvalidKeyError for nested", err)
	}
	// Invalid keys that were not requested are nobody's business.
	if _, err := Select([]string{"db"}, values, invalid); err != nil {
		t.Errorf("Select = %v", err)
	}
}

func TestValidatePattern(t *testing.T) {
	for _, p := range []string{"{namespace}/*", "/{namespace}/{serviceaccount}/*", "shared/*"} {
		if err := ValidatePattern(p); err != nil {
			t.Errorf("ValidatePattern(%q) = %v", p, err)
		}
	}
	for _, p := range []string{"", " ", "{ns}/*", "{namespace/*"} {
		if err := ValidatePattern(p); err == nil {
			t.Errorf("ValidatePattern(%q) = nil, want an error", p)
		}
	}
}

func FuzzGlobMatch(f *testing.F) {
	f.Add("{namespace}/*", "team-a/web")
	f.Add("*a*b*c*", "aaabbbccc")
	f.Add("?", "")
	f.Fuzz(func(t *testing.T, pattern, name string) {
		got := glob.Match(pattern, name) // must end and not panic
		if pattern == name && !strings.ContainsAny(pattern, "*?") && !got {
			t.Errorf("glob.Match(%q, %q) = false for a literal", pattern, name)
		}
		if pattern == "*" && !got {
			t.Errorf("* does not match %q", name)
		}
	})
}

func FuzzParseAllowList(f *testing.F) {
	f.Add(" team-a:web , ,team-b:api")
	f.Fuzz(func(t *testing.T, s string) {
		l := ParseAllowList(s)
		for _, e := range l.Entries {
			if e == "" || e != strings.TrimSpace(e) {
				t.Errorf("entry %q is empty or untrimmed", e)
			}
		}
	})
}

func TestListMayGrant(t *testing.T) {
	tests := []struct {
		grants []string
		name   string
		want   bool
	}{
		{DefaultAllowListGrants, "team-b/web", true},
		{DefaultAllowListGrants, "/team-b/app", true},
		{nil, "team-b/web", false},
		{[]string{"shared/*"}, "shared/db", true},
		{[]string{"shared/*"}, "team-b/web", false},
		{[]string{"/shared/*"}, "/shared/app", true},
		{[]string{"grants/{namespace}/*"}, "grants/team-a/db", true},
		{[]string{"grants/{namespace}/*"}, "grants/team-b/db", false},
	}
	for _, tt := range tests {
		if got := (Rules{AllowListGrants: tt.grants}).ListMayGrant(teamA, tt.name); got != tt.want {
			t.Errorf("ListMayGrant(%q) with %q = %v, want %v", tt.name, tt.grants, got, tt.want)
		}
	}
}
