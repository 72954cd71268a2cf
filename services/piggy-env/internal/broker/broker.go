// Package broker is the HTTPS JSON client of the secret broker's
// GetSecrets endpoint (POST /v1/secrets, served by grpc-gateway).
//
// The client reads the projected service-account token afresh for every
// request, sends it as a bearer token, and turns the broker's answers into
// values or typed errors that say whether a retry can help.
package broker

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// maxResponse bounds the response body piggy-env reads.
const maxResponse = 4 << 20

// Request is the body of POST /v1/secrets.
type Request struct {
	// ContainerUID is the container's piggy UID.
	ContainerUID string `json:"containerUid"`
	// Signature is the hex SHA-256 of the command line.
	Signature string `json:"signature"`
	// Keys are the referenced secret keys.
	Keys []string `json:"keys"`
	// FetchID is made once per process and sent with every attempt: the
	// broker answers a container once per start, and a retry with the
	// same id is the same fetch. Never logged, never given to the child.
	FetchID string `json:"fetchId,omitempty"`
}

// Response is the broker's answer to a successful request.
type Response struct {
	// Values maps the keys found to their values.
	Values map[string]string `json:"values"`
	// MissingKeys lists requested keys the secret does not hold.
	MissingKeys []string `json:"missingKeys"`
	// SourceName names where the values came from (a secret name or path).
	SourceName string `json:"sourceName"`
}

// StatusError is a non-200 answer of the broker.
type StatusError struct {
	// HTTPStatus is the HTTP status code.
	HTTPStatus int
	// Code is the gRPC status code from the body, or -1 when the body was
	// not grpc-gateway status JSON (for example a proxy's error page).
	Code int
	// Message is the broker's message, if any.
	Message string
	// Hint is how long the broker asked to wait before retrying (the
	// Retry-After header of a 429 or 503, else the body's
	// google.rpc.RetryInfo), when it said.
	Hint time.Duration
	// Hinted reports whether the broker gave Hint.
	Hinted bool
}

// Error implements error.
func (e *StatusError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "broker answered HTTP %d", e.HTTPStatus)
	if text := http.StatusText(e.HTTPStatus); text != "" {
		fmt.Fprintf(&b, " %s", text)
	}
	if name := codeName(e.Code); name != "" {
		fmt.Fprintf(&b, " (%s)", name)
	}
	if e.Message != "" {
		fmt.Fprintf(&b, ": %s", e.Message)
	}
	if e.Overloaded() && !strings.Contains(e.Message, "overloaded") {
		b.WriteString(": the broker is overloaded")
	}
	if e.Hinted {
		fmt.Fprintf(&b, " (it asked to retry after %s)", e.Hint)
	}
	return b.String()
}

// Overloaded reports whether the broker refused the request for load (429
// or RESOURCE_EXHAUSTED) rather than for what it asked.
func (e *StatusError) Overloaded() bool {
	return e.HTTPStatus == http.StatusTooManyRequests || e.Code == codeResourceExhausted
}

// RetryAfter is the broker's retry hint; retry.Policy waits for it.
func (e *StatusError) RetryAfter() (time.Duration, bool) { return e.Hint, e.Hinted }

// Retryable reports whether the status may go away on a retry: 429, 500,
// 502, 503 and 504.
func (e *StatusError) Retryable() bool {
	switch e.HTTPStatus {
	case http.StatusTooManyRequests, http.StatusInternalServerError, http.StatusBadGateway,
		http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// TransportError is a failure to get any answer from the broker: DNS,
// connection, TLS or an interrupted response.
type TransportError struct {
	// Err is the underlying error.
	Err error
}

// Error implements error.
func (e *TransportError) Error() string { return e.Err.Error() }

// Unwrap returns the underlying error.
func (e *TransportError) Unwrap() error { return e.Err }

// Retryable reports whether a retry may help: everything except
// certificate verification failures, which need a configuration change.
func (e *TransportError) Retryable() bool {
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	var ci x509.CertificateInvalidError
	return !errors.As(e.Err, &cv) && !errors.As(e.Err, &ua) && !errors.As(e.Err, &hn) && !errors.As(e.Err, &ci)
}

// Retryable reports whether err, returned by Client.GetSecrets, may be
// retried: transport errors (except certificate problems) and 429, 500, 502,
// 503 and 504 answers. Token file problems, other statuses and malformed
// answers are final.
func Retryable(err error) bool {
	if se, ok := errors.AsType[*StatusError](err); ok {
		return se.Retryable()
	}
	if te, ok := errors.AsType[*TransportError](err); ok {
		return te.Retryable()
	}
	return false
}

// Options configure a Client.
type Options struct {
	// Address is the broker's base URL; the request goes to
	// Address + "/v1/secrets".
	Address *url.URL
	// TokenFile is read for every request.
	TokenFile string
	// HTTPClient sends the requests; see NewHTTPClient.
	HTTPClient *http.Client
}

// Client calls the broker.
type Client struct {
	endpoint  string
	tokenFile string
	http      *http.Client
}

// New returns a client. It makes no network call.
func New(o Options) (*Client, error) {
	if o.Address == nil {
		return nil, errors.New("broker address is not set")
	}
	if o.HTTPClient == nil {
		return nil, errors.New("broker HTTP client is not set")
	}
	return &Client{
		endpoint:  strings.TrimSuffix(o.Address.String(), "/") + "/v1/secrets",
		tokenFile: o.TokenFile,
		http:      o.HTTPClient,
	}, nil
}

// GetSecrets asks the broker for the values of req.Keys.
func (c *Client) GetSecrets(ctx context.Context, req Request) (Response, error) {
	token, err := readToken(c.tokenFile)
	if err != nil {
		return Response{}, err
	}
	body, err := json.Marshal(req)
	if err != nil {
		return Response{}, fmt.Errorf("encode request: %w", err)
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint, bytes.NewReader(body))
	if err != nil {
		return Response{}, fmt.Errorf("build request: %w", err)
	}
	hreq.Header.Set("Authorization", "Bearer "+token)
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Accept", "application/json")

	resp, err := c.http.Do(hreq)
	if err != nil {
		// url.Error repeats the method and URL, which the caller already
		// names; keep the cause.
		if ue, ok := errors.AsType[*url.Error](err); ok {
			err = ue.Err
		}
		return Response{}, &TransportError{Err: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return Response{}, &TransportError{Err: fmt.Errorf("read response: %w", err)}
	}
	if len(data) > maxResponse {
		return Response{}, fmt.Errorf("broker response is larger than %d bytes", maxResponse)
	}
	if resp.StatusCode != http.StatusOK {
		se := statusError(resp.StatusCode, data)
		if d, ok := retryAfterHeader(resp.Header.Get("Retry-After"), time.Now()); ok && (se.Overloaded() || resp.StatusCode == http.StatusServiceUnavailable) {
			se.Hint, se.Hinted = d, true
		}
		return Response{}, se
	}
	var out Response
	if err := json.Unmarshal(data, &out); err != nil {
		// The body holds secret values: never quote it.
		return Response{}, fmt.Errorf("broker answered HTTP 200 with a body that is not a GetSecrets response (%s)", jsonErrorKind(err))
	}
	return out, nil
}

func readToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read service-account token (PIGGY_TOKEN_FILE): %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("service-account token file %s (PIGGY_TOKEN_FILE) is empty", path)
	}
	return token, nil
}

// statusError decodes a grpc-gateway error body: {"code":7,"message":"...",
// "details":[...]}, with the delay of a google.rpc.RetryInfo detail.
func statusError(httpStatus int, body []byte) *StatusError {
	var st struct {
		Code    *int   `json:"code"`
		Message string `json:"message"`
		Details []struct {
			Type       string `json:"@type"`
			RetryDelay string `json:"retryDelay"`
		} `json:"details"`
	}
	e := &StatusError{HTTPStatus: httpStatus, Code: -1}
	if json.Unmarshal(body, &st) == nil && st.Code != nil {
		e.Code = *st.Code
		e.Message = truncate(st.Message, 512)
		for _, d := range st.Details {
			if d.Type != retryInfoType {
				continue
			}
			// protojson writes a Duration as seconds with an "s" suffix.
			if v, err := time.ParseDuration(d.RetryDelay); err == nil && v >= 0 {
				e.Hint, e.Hinted = min(v, maxHint), true
			}
		}
	}
	return e
}

// retryInfoType is the type URL of google.rpc.RetryInfo in grpc-gateway's
// error details.
const retryInfoType = "type.googleapis.com/google.rpc.RetryInfo"

// codeResourceExhausted is gRPC's RESOURCE_EXHAUSTED.
const codeResourceExhausted = 8

// maxHint bounds the hints read; retry.Policy bounds the wait further.
const maxHint = time.Hour

// retryAfterHeader reads a Retry-After header: delay-seconds or an HTTP
// date (RFC 9110, 10.2.3).
func retryAfterHeader(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		return min(time.Duration(min(secs, int64(maxHint/time.Second)))*time.Second, maxHint), true
	}
	if at, err := http.ParseTime(v); err == nil {
		return min(max(at.Sub(now), 0), maxHint), true
	}
	return 0, false
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// jsonErrorKind describes a decoding error without quoting the input.
func jsonErrorKind(err error) string {
	if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		return fmt.Sprintf("field %q has the wrong type", te.Field)
	}
	if se, ok := errors.AsType[*json.SyntaxError](err); ok {
		return fmt.Sprintf("invalid JSON at offset %d", se.Offset)
	}
	return "invalid JSON"
}

// codeName names the gRPC codes grpc-gateway sends.
func codeName(code int) string {
	names := [...]string{"OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
		"AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
		"OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated"}
	if code < 0 || code >= len(names) {
		return ""
	}
	return names[code]
}

// TLSOptions say how the client verifies the broker.
type TLSOptions struct {
	// CAFile is a PEM bundle used as the only roots when the file exists;
	// when it does not exist the system roots are used, unless CAFileVar
	// is set.
	CAFile string
	// CAFileVar is the variable that named CAFile (PIGGY_CA_FILE), when
	// one did: the file must then exist, and the error names the variable.
	CAFileVar string
	// SkipVerify disables certificate verification.
	SkipVerify bool
}

// NewHTTPClient returns an HTTP client for the broker: connections made with
// dialer, TLS per t, every phase bounded by timeout, and no proxy (the broker
// is an in-cluster service; HTTP(S)_PROXY variables are meant for the app).
// It reports whether the CA file was used.
func NewHTTPClient(dialer *net.Dialer, t TLSOptions, timeout time.Duration) (*http.Client, bool, error) {
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	usedCA := false
	switch {
	case t.SkipVerify:
		tlsConfig.InsecureSkipVerify = true // the operator's decision (PIGGY_SKIP_VERIFY_TLS)
	case t.CAFile != "":
		pem, err := os.ReadFile(t.CAFile)
		switch {
		case errors.Is(err, os.ErrNotExist) && t.CAFileVar != "":
			// Fail closed: the operator named a CA; the system roots
			// would trust brokers it did not mean.
			return nil, false, fmt.Errorf("%s=%s does not exist; piggy-env does not fall back to the system roots when a CA file is named", t.CAFileVar, t.CAFile)
		case errors.Is(err, os.ErrNotExist):
			// No injected CA: the broker must present a publicly
			// trusted certificate.
		case err != nil:
			return nil, false, fmt.Errorf("read CA file: %w", err)
		default:
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, false, fmt.Errorf("CA file %s holds no PEM certificate", t.CAFile)
			}
			tlsConfig.RootCAs = pool
			usedCA = true
		}
	}
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           dialer.DialContext,
		TLSClientConfig:       tlsConfig,
		TLSHandshakeTimeout:   timeout,
		ResponseHeaderTimeout: timeout,
		ExpectContinueTimeout: time.Second,
		MaxIdleConns:          2,
		IdleConnTimeout:       30 * time.Second,
		ForceAttemptHTTP2:     true,
	}
	return &http.Client{Transport: tr, Timeout: timeout}, usedCA, nil
}
