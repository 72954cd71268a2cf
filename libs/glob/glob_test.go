package glob

import "testing"

func TestMatch(t *testing.T) {
	tests := []struct {
		pattern, name string
		want          bool
	}{
		{"apps/*", "apps/db", true},
		{"apps/*", "apps/db/nested", true},
		{"apps/*", "apps", false},
		{"apps/?b", "apps/db", true},
		{"*", "", true},
		{"", "", true},
		{"", "x", false},
		{"a*b*c", "aXbYbZc", true},
		{"a*b*c", "aXbYbZ", false},
		{"arn:aws:secretsmanager:*:*:secret:apps/*", "arn:aws:secretsmanager:us-east-1:123456789012:secret:apps/db-AbCdEf", true},
		{"**x", "yyyx", true},
		{"a*c", "a*bc", true},
		{"*b", "*xb", true},
		{"{namespace}/*", "team/app", false},
	}
	for _, tt := range tests {
		if got := Match(tt.pattern, tt.name); got != tt.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tt.pattern, tt.name, got, tt.want)
		}
	}
}

func FuzzMatch(f *testing.F) {
	f.Add("a*b?c", "aXXbYc")
	f.Add("*", "*")
	f.Fuzz(func(t *testing.T, pattern, name string) {
		_ = Match(pattern, name) // must end and not panic
		if !Match(name, name) && !containsWildcard(name) {
			t.Errorf("a literal name does not match itself: %q", name)
		}
	})
}

func containsWildcard(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '*' || s[i] == '?' {
			return true
		}
	}
	return false
}
