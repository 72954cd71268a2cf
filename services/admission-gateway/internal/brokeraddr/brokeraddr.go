// Package brokeraddr decides whether a pod's broker address
// (piggysec.com/piggy-address) is one the operator allows. Both the
// address and the allowlist entries are parsed as URLs and compared by
// scheme, host, port and path, never as strings: a prefix of a string is
// not a prefix of a host (https://broker.piggy.svc.evil.example), and text
// before an "@" is not a host (https://broker.piggy.svc:8443@evil.example).
package brokeraddr

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Pattern is one allowlist entry: https://host[:port][/path], where the
// host may start with a "*." wildcard that stands for exactly one DNS
// label (https://*.piggy.svc:8443).
type Pattern struct {
	raw      string
	wildcard bool   // host is "*." + host
	host     string // lower case, without the wildcard label
	port     string // "443" when the entry names none
	path     string // without a trailing "/"
}

// String returns the entry as written.
func (p Pattern) String() string { return p.raw }

// ParsePattern parses an allowlist entry.
func ParsePattern(s string) (Pattern, error) {
	u, err := Parse(s)
	if err != nil {
		return Pattern{}, err
	}
	p := Pattern{raw: s, host: strings.ToLower(u.Hostname()), port: port(u), path: strings.TrimSuffix(u.Path, "/")}
	if rest, ok := strings.CutPrefix(p.host, "*."); ok {
		p.wildcard, p.host = true, rest
	}
	if strings.Contains(p.host, "*") || p.host == "" {
		return Pattern{}, fmt.Errorf("%q: a wildcard may only be the whole leftmost DNS label of the host, as in https://*.piggy.svc:8443", s)
	}
	return p, nil
}

// ParsePatterns parses every entry and reports all bad ones.
func ParsePatterns(entries []string) ([]Pattern, error) {
	var (
		out  []Pattern
		errs []error
	)
	for _, e := range entries {
		p, err := ParsePattern(e)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, p)
	}
	return out, errors.Join(errs...)
}

// Match reports whether the broker address u (from Parse) is allowed by p.
func (p Pattern) Match(u *url.URL) bool {
	host := strings.ToLower(u.Hostname())
	if p.wildcard {
		label, rest, ok := strings.Cut(host, ".")
		if !ok || label == "" || rest != p.host {
			return false
		}
	} else if host != p.host {
		return false
	}
	return port(u) == p.port && strings.TrimSuffix(u.Path, "/") == p.path
}

// Parse checks that s is an https URL a broker can have: a host, no user
// information, no query or fragment.
func Parse(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	switch {
	case err != nil || u.Scheme != "https" || u.Host == "" || u.Opaque != "":
		return nil, fmt.Errorf("%q is not an https:// URL", s)
	case u.User != nil:
		return nil, fmt.Errorf("%q has user information before the host", s)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(s, "#"):
		return nil, fmt.Errorf("%q has a query or a fragment", s)
	}
	return u, nil
}

func port(u *url.URL) string {
	if p := u.Port(); p != "" {
		return strings.TrimLeft(p, "0")
	}
	return "443"
}
