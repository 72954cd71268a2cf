package resolve

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Outcomes of a lookup that callers branch on; an *Error matches exactly
// one of them with errors.Is.
var (
	// ErrInvalidArgument: the reference, platform or TLS request is invalid.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrNotFound: the registry does not know the repository, tag or digest.
	ErrNotFound = errors.New("not found")
	// ErrUnauthenticated: the registry wants credentials it did not get or did not accept (401).
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrPermissionDenied: the registry refused the credentials access (403).
	ErrPermissionDenied = errors.New("permission denied")
	// ErrUnavailable: the registry or the Kubernetes API could not be reached
	// or did not answer in time; retrying may help.
	ErrUnavailable = errors.New("unavailable")
	// ErrNoMatchingPlatform: the image has no manifest for the platform;
	// Error.Platforms lists the ones it has.
	ErrNoMatchingPlatform = errors.New("no matching platform")
	// ErrFailedPrecondition: configuration outside the request prevents the
	// lookup (unreadable or malformed pull secret, unsupported media type).
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrInternal: anything else.
	ErrInternal = errors.New("internal error")
)

// Error is a failed lookup. Message is safe to show to clients: it names
// the image, registry, status codes and platforms, never credentials or
// raw registry bodies. Err is the cause, for server logs only.
type Error struct {
	// Kind is one of the Err* outcomes.
	Kind error
	// Message is the client-safe description.
	Message string
	// Platforms are the platforms the image offers (ErrNoMatchingPlatform).
	Platforms []Platform
	// Err is the underlying cause, possibly nil.
	Err error
}

// Error returns the message and the cause, for server logs; clients get
// Message only.
func (e *Error) Error() string {
	if e.Err != nil {
		return e.Message + ": " + e.Err.Error()
	}
	return e.Message
}

// Unwrap exposes Kind and the cause to errors.Is and errors.As.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// Outcome names the kind for metrics and logs ("ok" for nil).
func Outcome(err error) string {
	var e *Error
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, context.DeadlineExceeded) && !errors.As(err, &e):
		return "deadline_exceeded"
	case errors.Is(err, context.Canceled) && !errors.As(err, &e):
		return "canceled"
	}
	for _, k := range []struct {
		kind error
		name string
	}{
		{ErrInvalidArgument, "invalid_argument"},
		{ErrNotFound, "not_found"},
		{ErrUnauthenticated, "unauthenticated"},
		{ErrPermissionDenied, "permission_denied"},
		{ErrUnavailable, "unavailable"},
		{ErrNoMatchingPlatform, "no_matching_platform"},
		{ErrFailedPrecondition, "failed_precondition"},
	} {
		if errors.Is(err, k.kind) {
			return k.name
		}
	}
	return "internal"
}

// tooLarge refuses an image whose manifest or config is over the
// resolver's limit (size -1: not declared, found while reading).
func tooLarge(image, what string, size, limit int64) *Error {
	flag := map[string]string{"manifest": "--max-manifest-bytes", "config": "--max-config-bytes"}[what]
	if size < 0 {
		return newError(ErrFailedPrecondition, nil, "image %s: its %s is larger than the resolver's limit of %d bytes (%s)", image, what, limit, flag)
	}
	return newError(ErrFailedPrecondition, nil, "image %s: its %s is %d bytes, over the resolver's limit of %d bytes (%s)", image, what, size, limit, flag)
}

func newError(kind error, cause error, format string, args ...any) *Error {
	return &Error{Kind: kind, Message: fmt.Sprintf(format, args...), Err: cause}
}

// downgradeError is returned by the lookup transport for a plain-HTTP
// request the lookup may not make.
type downgradeError struct{ host string }

// Error describes the refused request.
func (e *downgradeError) Error() string {
	return "plain HTTP to " + e.host + " refused: registry TLS is required unless the registry is listed in --insecure-registries and the request sets skip_tls_verify"
}

// classify turns a registry-side failure into an *Error. observed are the
// transport errors the lookup transport saw (go-containerregistry folds
// the https and http ping errors into a type that does not unwrap).
func classify(err error, image, registry string, timedOut bool, observed []error) *Error {
	var dest *destinationError
	if errors.As(err, &dest) || slices.ContainsFunc(observed, func(e error) bool { return errors.As(e, &dest) }) {
		// One message for every refused destination (see destinationError).
		return newError(ErrPermissionDenied, err, "registry %s is not allowed", registry)
	}
	var size *sizeError
	if errors.As(err, &size) || slices.ContainsFunc(observed, func(e error) bool { return errors.As(e, &size) }) {
		return tooLarge(image, size.what, size.size, size.limit)
	}
	if timedOut {
		return newError(ErrUnavailable, err, "registry %s did not answer %s in time", registry, image)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return newError(ErrUnavailable, err, "registry %s cut off its answer for %s", registry, image)
	}
	var terr *transport.Error
	if errors.As(err, &terr) {
		return classifyHTTP(terr, image, registry)
	}
	if c := classifyTransport(append([]error{err}, observed...), registry); c != nil {
		c.Err = err
		return c
	}
	return newError(ErrInternal, err, "read image %s from %s: unexpected error", image, registry)
}

func classifyHTTP(terr *transport.Error, image, registry string) *Error {
	var codes []string
	for _, d := range terr.Errors {
		codes = append(codes, string(d.Code))
	}
	has := func(cs ...transport.ErrorCode) bool {
		for _, c := range cs {
			if slices.Contains(codes, string(c)) {
				return true
			}
		}
		return false
	}
	answer := fmt.Sprintf("%d", terr.StatusCode)
	if len(codes) > 0 {
		answer += " " + codes[0]
	}
	switch {
	case has(transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode) || terr.StatusCode == http.StatusNotFound:
		return newError(ErrNotFound, terr, "image %s not found: registry %s answered %s", image, registry, answer)
	case has(transport.DeniedErrorCode) || terr.StatusCode == http.StatusForbidden:
		return newError(ErrPermissionDenied, terr, "registry %s denied access to %s (%s)", registry, image, answer)
	case has(transport.UnauthorizedErrorCode) || terr.StatusCode == http.StatusUnauthorized:
		return newError(ErrUnauthenticated, terr, "registry %s did not accept the credentials for %s (%s)", registry, image, answer)
	case terr.StatusCode == http.StatusBadRequest || has(transport.NameInvalidErrorCode, transport.ManifestInvalidErrorCode):
		return newError(ErrInvalidArgument, terr, "registry %s rejected the reference %s (%s)", registry, image, answer)
	default:
		return newError(ErrUnavailable, terr, "registry %s answered %s for %s", registry, answer, image)
	}
}

// classifyTransport looks for the most telling failure among errs: a TLS
// verification failure, then an unreachable host, then a refused downgrade
// to plain HTTP (go-containerregistry tries https and http in parallel for
// loopback and private registries, so one lookup may see several).
func classifyTransport(errs []error, registry string) *Error {
	var (
		dg       *downgradeError
		unknown  x509.UnknownAuthorityError
		invalid  x509.CertificateInvalidError
		hostname x509.HostnameError
		verify   *tls.CertificateVerificationError
		netErr   net.Error
		opErr    *net.OpError
	)
	found := func(match func(error) bool) bool { return slices.ContainsFunc(errs, match) }
	switch {
	case found(func(e error) bool {
		return errors.As(e, &unknown) || errors.As(e, &invalid) || errors.As(e, &hostname) || errors.As(e, &verify)
	}):
		return newError(ErrUnavailable, nil, "TLS verification of registry %s failed (trust its CA with --registry-ca-file, or list it in --insecure-registries and set skip_tls_verify)", registry)
	case found(func(e error) bool { return !errors.As(e, &dg) && (errors.As(e, &opErr) || errors.As(e, &netErr)) }):
		return newError(ErrUnavailable, nil, "registry %s is unreachable", registry)
	case found(func(e error) bool { return errors.As(e, &dg) }):
		return newError(ErrUnavailable, nil, "registry %s: %s", registry, dg.Error())
	}
	return nil
}
