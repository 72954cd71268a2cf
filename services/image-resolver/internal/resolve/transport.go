package resolve

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"strconv"
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

func newTransports(rootCAs *x509.CertPool, latency metric.Float64Histogram) transports {
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: rootCAs}
	base.MaxIdleConnsPerHost = 16
	base.ResponseHeaderTimeout = 30 * time.Second // the lookup's context is the real bound
	insecure := base.Clone()
	insecure.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true} //nolint:gosec // operator-listed insecure registries only
	wrap := func(rt http.RoundTripper) http.RoundTripper {
		return otelhttp.NewTransport(&measured{next: rt, latency: latency},
			otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return "registry " + r.Method }))
	}
	return transports{verified: wrap(base), insecure: wrap(insecure)}
}

// measured records the latency of every registry request.
type measured struct {
	next    http.RoundTripper
	latency metric.Float64Histogram
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
		attribute.String("server.address", req.URL.Host),
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
	return resp, nil
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
