package resolve

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"time"
)

// Destinations decides which addresses registry connections may reach.
// Pod creators choose the registry host, so without it the resolver is a
// port scanner of the cluster's own networks (loopback, link-local, the
// pod and node ranges) whose distinct errors tell what answers where.
//
// Every connection is checked after DNS resolution, which also covers the
// redirects registries answer with (blob storage) and names that resolve
// to an internal address. Public addresses may be reached; loopback,
// private (RFC 1918, RFC 4193), link-local, shared (RFC 6598),
// unspecified and multicast addresses only when the operator allows the
// registry by name ([Destinations.Registries]) or its network
// ([Destinations.Networks]).
type Destinations struct {
	// Registries (host[:port], as in image references and --insecure-
	// registries) may be reached whatever their addresses. A registry
	// named without a port is allowed on every port.
	Registries []string
	// Networks may be reached by any registry.
	Networks []netip.Prefix
}

// shared is RFC 6598 carrier-grade NAT space, used for pod networks too.
var shared = netip.MustParsePrefix("100.64.0.0/10")

// internal reports whether ip is an address the resolver does not reach
// unless allowed.
func internal(ip netip.Addr) bool {
	ip = ip.Unmap()
	return ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsInterfaceLocalMulticast() || ip.IsMulticast() || ip.IsUnspecified() || shared.Contains(ip)
}

// destinationError is a connection the destination filter refused. The
// message a caller gets says only that the registry is not allowed (see
// classify): which rule applied, and the address, would tell a prober
// what it found. The host (a registry or a redirect target) is for logs.
type destinationError struct{ host string }

func (e *destinationError) Error() string {
	return "connection to " + e.host + " refused: its addresses are internal and not allowed"
}

// dialer dials registries through the destination filter.
type dialer struct {
	net   net.Dialer
	hosts map[string]bool // "host:port" and "host" (any port)
	nets  []netip.Prefix
	// lookup resolves a host; net.DefaultResolver's in production.
	lookup func(ctx context.Context, host string) ([]netip.Addr, error)
}

func newDialer(d Destinations) (*dialer, error) {
	dl := &dialer{hosts: map[string]bool{}, nets: d.Networks, lookup: func(ctx context.Context, host string) ([]netip.Addr, error) {
		return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	}}
	dl.net.Timeout = 30 * time.Second // as net/http's default; the lookup's context is the real bound
	dl.net.KeepAlive = 30 * time.Second
	for _, h := range d.Registries {
		reg, err := NormalizeRegistry(h)
		if err != nil || strings.Contains(h, "/") {
			return nil, errors.New("resolve: allowed registry " + h + " is not a host[:port]")
		}
		dl.hosts[strings.ToLower(reg)] = true
		if reg == "index.docker.io" {
			dl.hosts["registry-1.docker.io"] = true
		}
	}
	return dl, nil
}

// allowedHost reports whether the operator named host (and port).
func (d *dialer) allowedHost(host, port string) bool {
	host = strings.ToLower(host)
	return d.hosts[host] || d.hosts[net.JoinHostPort(host, port)]
}

func (d *dialer) allowedAddr(ip netip.Addr) bool {
	if !internal(ip) {
		return true
	}
	for _, n := range d.nets {
		if n.Contains(ip.Unmap()) {
			return true
		}
	}
	return false
}

// DialContext resolves address, keeps the addresses that may be reached
// and dials them in order. When none may, it fails with a
// *destinationError without connecting anywhere.
func (d *dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	if d.allowedHost(host, port) {
		return d.net.DialContext(ctx, network, address)
	}
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = []netip.Addr{ip}
	} else if ips, err = d.lookup(ctx, host); err != nil {
		return nil, err
	}
	var last error
	for _, ip := range ips {
		if !d.allowedAddr(ip) {
			continue
		}
		c, err := d.net.DialContext(ctx, network, net.JoinHostPort(ip.Unmap().String(), port))
		if err == nil {
			return c, nil
		}
		last = err
	}
	if last == nil {
		return nil, &destinationError{host: host}
	}
	return nil, last
}
