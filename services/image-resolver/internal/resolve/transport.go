package resolve

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// transports are the shared, pooled HTTP stacks to registries: one that
// verifies TLS against rootCAs and one that skips verification (used only
// for registries the operator listed as insecure, when the request asks).
// Both are traced (otelhttp) and measured.
type transports struct {
	verified, insecure http.RoundTripper
}

func newTransports(rootCAs *x509.CertPool, dial *dialer, latency metric.Float64Histogram) transports {
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.DialContext = dial.DialContext
	base.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: rootCAs}
	base.MaxIdleConnsPerHost = 16
	base.ResponseHeaderTimeout = 30 * time.Second // the lookup's context is the real bound
	insecure := base.Clone()
	insecure.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true} //nolint:gosec // operator-listed insecure registries only
	labels := &hostLabels{}
	wrap := func(rt http.RoundTripper) http.RoundTripper {
		return otelhttp.NewTransport(&measured{next: rt, latency: latency, hosts: labels},
			otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return "registry " + r.Method }))
	}
	return transports{verified: wrap(base), insecure: wrap(insecure)}
}

// measured records the latency of every registry request.
type measured struct {
	next    http.RoundTripper
	latency metric.Float64Histogram
	hosts   *hostLabels // shared by both stacks
}

// maxHostLabels bounds the server.address values of the latency metric:
// pod creators choose registry hosts, and every distinct label value is a
// time series kept for the life of the process (and by Prometheus).
const maxHostLabels = 64

// otherHosts is the server.address of hosts beyond the first maxHostLabels.
const otherHosts = "other"

// hostLabels hands out a metric label per registry host, first come, up
// to maxHostLabels; later hosts share otherHosts.
type hostLabels struct {
	mu   sync.Mutex
	seen map[string]bool
}

func (h *hostLabels) label(host string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.seen[host] {
		return host
	}
	if len(h.seen) >= maxHostLabels {
		return otherHosts
	}
	if h.seen == nil {
		h.seen = map[string]bool{}
	}
	h.seen[host] = true
	return host
}

// RoundTrip implements http.RoundTripper.
func (m *measured) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := m.next.RoundTrip(req)
	status := "error"
	if err == nil {
		status = strconv.Itoa(resp.StatusCode)
	}
	m.latency.Record(req.Context(), time.Since(start).Seconds(), metric.WithAttributes(
		attribute.String("http.request.method", req.Method),
		attribute.String("http.response.status_code", status),
		attribute.String("server.address", m.hosts.label(req.URL.Host)),
	))
	return resp, err
}

// lookupTransport is the per-lookup front of a shared stack: it refuses
// plain HTTP unless this lookup may use it for this registry host (go-
// containerregistry otherwise falls back to http for loopback, RFC 1918
// and *.local registries), records each call as an explanation step, and
// keeps the transport errors it saw for classification.
type lookupTransport struct {
	next     http.RoundTripper
	limits   sizeLimits
	httpHost string // the one host plain HTTP may reach; empty: none
	steps    *steps
	mu       sync.Mutex
	errs     []error
}

// RoundTrip implements http.RoundTripper.
func (t *lookupTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" && (req.URL.Scheme != "http" || t.httpHost == "" || req.URL.Host != t.httpHost) {
		err := &downgradeError{host: req.URL.Host}
		t.observe(err)
		t.steps.add("%s %s://%s%s refused: plain HTTP is not allowed for this registry", req.Method, req.URL.Scheme, req.URL.Host, req.URL.Path)
		return nil, err
	}
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		t.observe(err)
		t.steps.add("%s %s://%s%s failed", req.Method, req.URL.Scheme, req.URL.Host, req.URL.Path)
		return nil, err
	}
	t.steps.add("%s %s://%s%s: %d", req.Method, req.URL.Scheme, req.URL.Host, req.URL.Path, resp.StatusCode)
	if what, limit := t.limits.of(req); limit > 0 && resp.StatusCode == http.StatusOK {
		if resp.ContentLength > limit {
			resp.Body.Close()
			err := &sizeError{what: what, size: resp.ContentLength, limit: limit}
			t.observe(err)
			return nil, err
		}
		resp.Body = &limitedBody{ReadCloser: resp.Body, left: limit, what: what, limit: limit, t: t}
	}
	return resp, nil
}

// sizeLimits bound what one lookup reads from a registry.
type sizeLimits struct {
	manifest, config int64
}

// of returns the limit of the answer to req: manifests and indexes by
// manifest, blobs (the resolver reads only config blobs) by config; 0 for
// anything else (token and ping requests).
func (l sizeLimits) of(req *http.Request) (string, int64) {
	switch p := req.URL.Path; {
	case req.Method != http.MethodGet:
		return "", 0
	case strings.Contains(p, "/manifests/"):
		return "manifest", l.manifest
	case strings.Contains(p, "/blobs/"):
		return "config", l.config
	}
	return "", 0
}

// sizeError is an answer over its limit.
type sizeError struct {
	what        string
	size, limit int64 // size is -1 when the answer did not declare it
}

func (e *sizeError) Error() string {
	if e.size < 0 {
		return fmt.Sprintf("the %s is larger than the limit of %d bytes", e.what, e.limit)
	}
	return fmt.Sprintf("the %s is %d bytes, over the limit of %d bytes", e.what, e.size, e.limit)
}

// limitedBody fails the read that goes past the limit, so a registry that
// sends more than it declared cannot make the lookup hold more.
type limitedBody struct {
	io.ReadCloser
	left, limit int64
	what        string
	t           *lookupTransport
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left < 0 {
		return 0, &sizeError{what: b.what, size: -1, limit: b.limit}
	}
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1] // one byte past the limit is enough to know
	}
	n, err := b.ReadCloser.Read(p)
	if b.left -= int64(n); b.left < 0 {
		e := &sizeError{what: b.what, size: -1, limit: b.limit}
		b.t.observe(e)
		return n, e
	}
	return n, err
}

func (t *lookupTransport) observe(err error) {
	t.mu.Lock()
	t.errs = append(t.errs, err)
	t.mu.Unlock()
}

func (t *lookupTransport) observed() []error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]error(nil), t.errs...)
}
