package awssecrets

import (
	"context"
	"errors"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"

	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
)

// errorCode is a short label of an AWS call's error for metrics and spans:
// the AWS error code, or credentials, canceled, timeout, transport_error.
func errorCode(err error) string {
	switch {
	case credentialsError(err):
		return "credentials"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	if ae, ok := errors.AsType[smithy.APIError](err); ok {
		return ae.ErrorCode()
	}
	return "transport_error"
}

// credentialsError reports whether err is a failure to get the broker's
// own credentials (the web identity STS call), not of the operation.
func credentialsError(err error) bool {
	for e := err; e != nil; e = errors.Unwrap(e) {
		if oe, ok := e.(*smithy.OperationError); ok && oe.ServiceID == "STS" {
			return true
		}
	}
	return false
}

// rejectedCredentialCodes are the AWS error codes that say the credentials
// a request was signed with are not (or no longer) valid: new credentials
// may be accepted. Signature errors are not among them: they come from the
// signing itself (the clock, the region), which new credentials do not fix.
var rejectedCredentialCodes = map[string]bool{
	"UnrecognizedClientException": true,
	"InvalidClientTokenId":        true,
	"ExpiredToken":                true,
	"ExpiredTokenException":       true,
}

// rejectedCredentials reports whether AWS refused the operation because of
// the credentials it was signed with.
func rejectedCredentials(err error) bool {
	if err == nil || credentialsError(err) {
		return false
	}
	ae, ok := errors.AsType[smithy.APIError](err)
	return ok && rejectedCredentialCodes[ae.ErrorCode()]
}

// classify turns an SDK error (after the SDK's retries) into a fault that
// names the source, never a value. AWS error codes are fixed identifiers
// and go into the message; AWS's own message text stays in the cause.
func classify(err error, src Source) error {
	what := src.String()
	if !src.IsSSM() {
		what += " (version " + src.EffectiveVersion() + ")"
	}
	switch {
	case credentialsError(err):
		return fault.Wrap(err, fault.Unavailable, "aws_credentials", "the broker could not get AWS credentials to read %s; retry", src)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return fault.Wrap(err, fault.Unavailable, "aws_timeout", "reading %s from AWS did not finish in time; retry", src)
	}
	code := errorCode(err)
	switch code {
	case "ResourceNotFoundException", "ParameterNotFound":
		return fault.Wrap(err, fault.NotFound, "secret_not_found", "%s not found in region %s", what, src.Region)
	case "AccessDeniedException", "AccessDenied", "DecryptionFailure", "InvalidKeyId", "KMSAccessDeniedException":
		return fault.Wrap(err, fault.PermissionDenied, "aws_access_denied", "AWS does not let the broker read %s (%s)", what, code)
	case "InvalidParameterException", "ValidationException", "InvalidParameterValue", "InvalidFilterValue":
		return fault.Wrap(err, fault.InvalidArgument, "aws_invalid_parameter", "AWS rejected the request for %s (%s)", what, code)
	case "InvalidRequestException":
		return fault.Wrap(err, fault.FailedPrecondition, "aws_invalid_request", "AWS cannot serve %s in its current state, for example scheduled for deletion (%s)", what, code)
	case "ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded", "ThrottledException":
		return fault.Wrap(err, fault.Unavailable, "aws_throttled", "AWS throttled the read of %s; retry", src)
	case "ExpiredTokenException", "ExpiredToken", "InvalidClientTokenId", "UnrecognizedClientException", "InvalidSignatureException", "SignatureDoesNotMatch":
		return fault.Wrap(err, fault.Unavailable, "aws_credentials", "AWS rejected the broker's credentials while reading %s (%s); retry", src, code)
	}
	if re, ok := errors.AsType[*awshttp.ResponseError](err); ok && re.HTTPStatusCode() >= 400 && re.HTTPStatusCode() < 500 && re.HTTPStatusCode() != 429 {
		return fault.Wrap(err, fault.Internal, "aws_error", "AWS refused to read %s (%s)", what, code)
	}
	if retry.IsErrorRetryables(retry.DefaultRetryables).IsErrorRetryable(err) == aws.FalseTernary {
		return fault.Wrap(err, fault.Internal, "aws_error", "reading %s from AWS failed (%s)", what, code)
	}
	return fault.Wrap(err, fault.Unavailable, "aws_unavailable", "AWS is unavailable for %s (%s); retry", src, code)
}

// Transient reports whether err is a failure that may go away (for
// stale-if-error): throttling, 5xx, timeouts, credentials, transport.
func Transient(err error) bool {
	return fault.KindOf(err) == fault.Unavailable
}
