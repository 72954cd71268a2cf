package brokeraddr_test

import (
	"strings"
	"testing"

	"github.com/piggysec/piggy/services/admission-gateway/internal/brokeraddr"
)

func TestMatch(t *testing.T) {
	tests := []struct {
		pattern string
		addr    string
		want    bool
	}{
		{"https://broker.piggy.svc:8443", "https://broker.piggy.svc:8443", true},
		{"https://broker.piggy.svc:8443", "https://BROKER.piggy.svc:8443/", true},
		{"https://broker.piggy.svc", "https://broker.piggy.svc:443", true},
		{"https://broker.piggy.svc:8443", "https://broker.piggy.svc:9443", false},
		{"https://broker.piggy.svc:8443", "https://broker.piggy.svc", false},
		{"https://broker.piggy.svc:8443", "https://broker.piggy.svc.evil.example:8443", false},
		{"https://broker.piggy.svc:8443", "https://broker.piggy.svc:8443/other", false},
		{"https://*.piggy.svc:8443", "https://broker.piggy.svc:8443", true},
		{"https://*.piggy.svc:8443", "https://a.b.piggy.svc:8443", false},
		{"https://*.piggy.svc:8443", "https://piggy.svc:8443", false},
		{"https://*.piggy.svc:8443", "https://broker.piggy.svc.evil.example:8443", false},
		{"https://*.piggy.svc:8443", "https://evilpiggy.svc:8443", false},
		{"https://broker.piggy.svc/base", "https://broker.piggy.svc/base/", true},
		{"https://broker.piggy.svc/base", "https://broker.piggy.svc/basement", false},
	}
	for _, tt := range tests {
		p, err := brokeraddr.ParsePattern(tt.pattern)
		if err != nil {
			t.Fatalf("ParsePattern(%q): %v", tt.pattern, err)
		}
		u, err := brokeraddr.Parse(tt.addr)
		if err != nil {
			t.Fatalf("Parse(%q): %v", tt.addr, err)
		}
		if got := p.Match(u); got != tt.want {
			t.Errorf("%q matches %q = %v, want %v", tt.pattern, tt.addr, got, tt.want)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	tests := []struct{ addr, want string }{
		{"http://broker.piggy.svc", "not an https:// URL"},
		{"broker.piggy.svc:8443", "not an https:// URL"},
		{"https://", "not an https:// URL"},
		{"https://broker.piggy.svc:8443@evil.example/", "user information"},
		{"https://user@broker.piggy.svc", "user information"},
		{"https://broker.piggy.svc?x=1", "query or a fragment"},
		{"https://broker.piggy.svc#x", "query or a fragment"},
		{"https://broker.piggy.svc:http", "not an https:// URL"},
		{"https://broker.piggy.svc:8443.evil.example", "not an https:// URL"},
	}
	for _, tt := range tests {
		if _, err := brokeraddr.Parse(tt.addr); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Parse(%q) error = %v, want %q", tt.addr, err, tt.want)
		}
	}
}

func TestParsePatternRefusesPartialWildcards(t *testing.T) {
	for _, p := range []string{"https://broker.piggy.svc*", "https://broker*.piggy.svc", "https://*", "https://a.*.svc"} {
		if _, err := brokeraddr.ParsePattern(p); err == nil {
			t.Errorf("ParsePattern(%q) succeeded, want an error", p)
		}
	}
}

func FuzzMatch(f *testing.F) {
	f.Add("https://*.piggy.svc:8443", "https://broker.piggy.svc:8443@evil.example/")
	f.Fuzz(func(t *testing.T, pattern, addr string) {
		p, err := brokeraddr.ParsePattern(pattern)
		if err != nil {
			return
		}
		u, err := brokeraddr.Parse(addr)
		if err != nil {
			return
		}
		if p.Match(u) && u.User != nil {
			t.Fatalf("%q matched an address with user information %q", pattern, addr)
		}
	})
}
