// Package fault classifies the broker's failures: every refusal or error a
// request can end with carries a Kind (what a client can do about it, mapped
// to a gRPC code in one place by the transport), a Reason (a short label for
// logs and metrics) and a message that is safe to send to the client.
//
// Messages may name a secret, a key, a pod or a service account; they never
// hold a secret value, a token or the text of an upstream error, which goes
// in Cause and is only logged.
package fault

import (
	"errors"
	"fmt"
)

// Kind says what a failure means to the client.
type Kind int

// Kinds of failure.
const (
	// Internal is a bug or an unexpected state; also the kind of errors that
	// are not *Error.
	Internal Kind = iota
	// InvalidArgument is a malformed request or pod configuration.
	InvalidArgument
	// Unauthenticated is a missing, invalid, expired or unbound token.
	Unauthenticated
	// PermissionDenied is an authenticated caller that may not read the
	// secret, or a container whose identity does not match.
	PermissionDenied
	// NotFound is a secret or parameter path that does not exist.
	NotFound
	// FailedPrecondition is a secret whose content cannot be served (binary,
	// not a JSON object, a requested key that is not a string).
	FailedPrecondition
	// Unavailable is a transient failure of AWS or the Kubernetes API
	// (throttling, 5xx, timeouts): the client should retry.
	Unavailable
)

// String names the kind.
func (k Kind) String() string {
	switch k {
	case InvalidArgument:
		return "invalid_argument"
	case Unauthenticated:
		return "unauthenticated"
	case PermissionDenied:
		return "permission_denied"
	case NotFound:
		return "not_found"
	case FailedPrecondition:
		return "failed_precondition"
	case Unavailable:
		return "unavailable"
	default:
		return "internal"
	}
}

// Error is a classified failure.
type Error struct {
	// Kind classifies the failure for the client.
	Kind Kind
	// Reason is a short snake_case label (token_unbound, policy_denied, ...)
	// for logs and metrics; a small fixed set.
	Reason string
	// Message is safe for the client: it may name the secret, never a value.
	Message string
	// Cause is the underlying error, for logs only.
	Cause error
}

// Error returns the message and, when set, the cause.
func (e *Error) Error() string {
	if e.Cause == nil {
		return e.Message
	}
	return e.Message + ": " + e.Cause.Error()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Cause }

// New returns an Error without a cause.
func New(kind Kind, reason, format string, args ...any) *Error {
	return &Error{Kind: kind, Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// Wrap returns an Error with cause.
func Wrap(cause error, kind Kind, reason, format string, args ...any) *Error {
	return &Error{Kind: kind, Reason: reason, Message: fmt.Sprintf(format, args...), Cause: cause}
}

// As returns the *Error in err's chain, or an Internal one wrapping err.
func As(err error) *Error {
	if err == nil {
		return nil
	}
	if e, ok := errors.AsType[*Error](err); ok {
		return e
	}
	return &Error{Kind: Internal, Reason: "internal", Message: "internal error", Cause: err}
}

// KindOf returns the kind of err (Internal for unclassified errors; err
// must not be nil).
func KindOf(err error) Kind {
	if err == nil {
		return Internal
	}
	return As(err).Kind
}

// ReasonOf returns the reason label of err: "" for nil, "internal" for
// unclassified errors.
func ReasonOf(err error) string {
	if err == nil {
		return ""
	}
	return As(err).Reason
}
