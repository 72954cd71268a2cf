package awslocal

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/piggysec/piggy/libs/glob"
)

// Service names, as used in SigV4 credential scopes, in [Server.Calls] and in
// [Fault.Service].
const (
	ServiceSTS            = "sts"
	ServiceSecretsManager = "secretsmanager"
	ServiceSSM            = "ssm"
	ServiceECR            = "ecr"
)

// maxBodyBytes bounds request bodies; AWS's own limits are far lower for the
// operations served here (a secret is at most 64 KiB).
const maxBodyBytes = 1 << 20

// Options configure a Server. The zero value is usable: region us-east-1,
// account 123456789012, one-hour credentials, unverified web identity tokens,
// every role trusted and allowed everything.
type Options struct {
	// Region is the only region the server accepts in SigV4 scopes and puts in
	// ARNs. Default "us-east-1".
	Region string
	// AccountID is the account in secret and parameter ARNs. Default
	// "123456789012". Role ARNs may name any account.
	AccountID string
	// CredentialDuration is the lifetime of credentials issued by
	// AssumeRoleWithWebIdentity when the request has no DurationSeconds.
	// Default one hour; tests may set it to seconds to force refreshes.
	CredentialDuration time.Duration
	// WebIdentity, when set, makes AssumeRoleWithWebIdentity verify token
	// signatures, issuer, audience and expiry. When nil only the JWT shape
	// (and exp, when present) is checked.
	WebIdentity *WebIdentity
	// StaticCredentials are long-lived keys accepted on Secrets Manager, SSM
	// and ECR requests, like an IAM user's access keys.
	StaticCredentials []StaticCredentials
	// Trust maps a role ARN to the token subjects ("sub" claim; * and ?
	// wildcards) that may assume it, like an IRSA trust policy. When Trust is
	// nil every role may be assumed by any subject; when it is non-nil, roles
	// missing from it cannot be assumed (AccessDenied).
	Trust map[string][]string
	// Allow maps a principal (role ARN, or StaticCredentials.Principal) to the
	// secret names, secret ARNs and parameter names it may use (* and ?
	// wildcards; * also matches "/"). Principals missing from Allow may use
	// everything.
	Allow map[string][]string
	// ECRTokenDuration is the lifetime of ECR authorization tokens (the
	// expiresAt of GetAuthorizationToken). Default 12 hours, as on AWS.
	ECRTokenDuration time.Duration
	// Now is the server's clock, for expiry checks. Default time.Now.
	Now func() time.Time
	// Logger receives one debug line per request (service, operation,
	// outcome; never values or credentials). Default: discard.
	Logger *slog.Logger
}

// StaticCredentials is a long-lived access key pair the server accepts.
type StaticCredentials struct {
	// AccessKeyID is the key id, conventionally starting with "AKIA".
	AccessKeyID string `json:"accessKeyId"`
	// SecretAccessKey is the signing secret.
	SecretAccessKey string `json:"secretAccessKey"`
	// Principal is the identity the key acts as, looked up in Options.Allow.
	// Default "arn:aws:iam::<AccountID>:user/awslocal".
	Principal string `json:"principal,omitempty"`
}

// LogValue keeps the secret key out of logs.
func (c StaticCredentials) LogValue() slog.Value {
	return slog.GroupValue(slog.String("accessKeyId", c.AccessKeyID), slog.String("principal", c.Principal))
}

// Server is an AWS-compatible HTTP handler for STS, Secrets Manager, SSM and
// ECR's GetAuthorizationToken.
// Create it with New; all methods are safe for concurrent use.
type Server struct {
	region      string
	account     string
	duration    time.Duration
	ecrDuration time.Duration
	webIdentity *verifier
	trust       map[string][]string
	allow       map[string][]string
	now         func() time.Time
	log         *slog.Logger

	mu      sync.Mutex
	creds   map[string]credential // by access key id
	secrets map[string]*secret    // by name
	params  map[string]*parameter // by name
	ecrPass string                // the registry password ECR tokens carry

	faults faultTable
}

// credential is an access key the server can verify signatures with.
type credential struct {
	secretKey    string
	sessionToken string    // empty for static keys
	expires      time.Time // zero for static keys
	principal    string    // role ARN or static principal, for Allow
	callerARN    string    // assumed-role ARN, for messages
}

var accountIDPattern = regexp.MustCompile(`^[0-9]{12}$`)

// New returns a Server configured by opts.
func New(opts Options) (*Server, error) {
	s := &Server{
		region:      opts.Region,
		account:     opts.AccountID,
		duration:    opts.CredentialDuration,
		ecrDuration: opts.ECRTokenDuration,
		ecrPass:     randomString(40, mixedAlnum),
		trust:       copyPatterns(opts.Trust),
		allow:       copyPatterns(opts.Allow),
		now:         opts.Now,
		log:         opts.Logger,
		creds:       map[string]credential{},
		secrets:     map[string]*secret{},
		params:      map[string]*parameter{},
		faults:      faultTable{calls: map[callKey]int{}},
	}
	if s.region == "" {
		s.region = "us-east-1"
	}
	if s.account == "" {
		s.account = "123456789012"
	}
	if !accountIDPattern.MatchString(s.account) {
		return nil, fmt.Errorf("account id %q: want 12 digits", s.account)
	}
	if s.duration == 0 {
		s.duration = time.Hour
	}
	if s.duration < 0 {
		return nil, fmt.Errorf("credential duration %v: must be positive", s.duration)
	}
	if s.ecrDuration == 0 {
		s.ecrDuration = 12 * time.Hour
	}
	if s.ecrDuration < 0 {
		return nil, fmt.Errorf("ECR token duration %v: must be positive", s.ecrDuration)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if opts.WebIdentity != nil {
		v, err := newVerifier(*opts.WebIdentity)
		if err != nil {
			return nil, err
		}
		s.webIdentity = v
	}
	for _, c := range opts.StaticCredentials {
		if c.AccessKeyID == "" || c.SecretAccessKey == "" {
			return nil, errors.New("static credentials need an access key id and a secret access key")
		}
		p := c.Principal
		if p == "" {
			p = "arn:aws:iam::" + s.account + ":user/awslocal"
		}
		s.creds[c.AccessKeyID] = credential{secretKey: c.SecretAccessKey, principal: p, callerARN: p}
	}
	return s, nil
}

func copyPatterns(m map[string][]string) map[string][]string {
	if m == nil {
		return nil
	}
	out := make(map[string][]string, len(m))
	for k, v := range m {
		out[k] = append([]string(nil), v...)
	}
	return out
}

// Region returns the region the server accepts.
func (s *Server) Region() string { return s.region }

// ServeHTTP routes a request to STS, Secrets Manager, SSM or ECR: requests
// with X-Amz-Target "secretsmanager.<Op>", "AmazonSSM.<Op>" or
// "AmazonEC2ContainerRegistry_V20150921.<Op>" are JSON 1.1 calls, everything
// else is an STS query-protocol call.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	service, op := classify(r)
	w.Header().Set("X-Amzn-Requestid", newRequestID())
	if err != nil {
		s.finish(r, w, service, op, &apiError{status: http.StatusRequestEntityTooLarge, code: codeSerialization, message: "request body too large or unreadable"}, nil)
		return
	}
	var form url.Values
	if service == ServiceSTS {
		form, err = parseForm(r, body)
		if err != nil {
			s.finish(r, w, service, "", &apiError{status: http.StatusBadRequest, code: "MalformedQueryString", message: "The query string is malformed."}, nil)
			return
		}
		op = truncate(first(form["Action"]), 64)
	}
	s.faults.count(service, op)
	aerr, closed := s.faults.apply(r.Context(), w, service, op)
	if closed {
		s.log.DebugContext(r.Context(), "awslocal request", "service", service, "operation", op, "fault", "connection closed")
		return
	}
	if aerr != nil {
		s.finish(r, w, service, op, aerr, nil)
		return
	}

	var out any
	switch service {
	case ServiceSTS:
		out, aerr = s.sts(form, w.Header().Get("X-Amzn-Requestid"))
	default:
		var caller credential
		if caller, aerr = s.authenticate(r, service, body); aerr == nil {
			out, aerr = s.jsonOperation(service, op, caller, body)
		}
	}
	s.finish(r, w, service, op, aerr, out)
}

// classify names the service and, for JSON services, the operation.
func classify(r *http.Request) (service, op string) {
	target := r.Header.Get("X-Amz-Target")
	// Operation names are short; truncating bounds what a junk header can
	// put in logs and counters.
	switch {
	case strings.HasPrefix(target, "secretsmanager."):
		return ServiceSecretsManager, truncate(strings.TrimPrefix(target, "secretsmanager."), 64)
	case strings.HasPrefix(target, "AmazonSSM."):
		return ServiceSSM, truncate(strings.TrimPrefix(target, "AmazonSSM."), 64)
	case strings.HasPrefix(target, ecrTargetPrefix):
		return ServiceECR, truncate(strings.TrimPrefix(target, ecrTargetPrefix), 64)
	default:
		return ServiceSTS, ""
	}
}

// finish writes the response of one call and logs its outcome (never the
// payload).
func (s *Server) finish(r *http.Request, w http.ResponseWriter, service, op string, aerr *apiError, out any) {
	if aerr != nil {
		s.log.DebugContext(r.Context(), "awslocal request", "service", service, "operation", op, "status", aerr.status, "error", aerr.code)
		if service == ServiceSTS {
			writeXMLError(w, aerr, w.Header().Get("X-Amzn-Requestid"))
		} else {
			writeJSONError(w, service, aerr)
		}
		return
	}
	s.log.DebugContext(r.Context(), "awslocal request", "service", service, "operation", op, "status", http.StatusOK)
	if service == ServiceSTS {
		w.Header().Set("Content-Type", "text/xml")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, xml.Header)
		_ = xml.NewEncoder(w).Encode(out)
		return
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.WriteHeader(http.StatusOK)
	_ = json.NewEncoder(w).Encode(out)
}

// apiError is an AWS error response.
type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

// Error codes shared by the JSON services.
const (
	codeSerialization    = "SerializationException"
	codeUnknownOperation = "UnknownOperationException"
	codeAccessDenied     = "AccessDeniedException"
)

func badRequest(code, format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, code: code, message: fmt.Sprintf(format, args...)}
}

// writeJSONError writes the JSON 1.1 error shape: __type in the body and in
// X-Amzn-ErrorType. Secrets Manager capitalises "Message", SSM does not.
func writeJSONError(w http.ResponseWriter, service string, e *apiError) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-Errortype", e.code)
	w.WriteHeader(e.status)
	msgKey := "message"
	if service == ServiceSecretsManager {
		msgKey = "Message"
	}
	body := map[string]string{"__type": e.code}
	if e.message != "" {
		body[msgKey] = e.message
	}
	_ = json.NewEncoder(w).Encode(body)
}

// stsErrorResponse is the query-protocol error document.
type stsErrorResponse struct {
	XMLName   xml.Name `xml:"https://sts.amazonaws.com/doc/2011-06-15/ ErrorResponse"`
	Type      string   `xml:"Error>Type"`
	Code      string   `xml:"Error>Code"`
	Message   string   `xml:"Error>Message"`
	RequestID string   `xml:"RequestId"`
}

func writeXMLError(w http.ResponseWriter, e *apiError, requestID string) {
	typ := "Sender"
	if e.status >= 500 {
		typ = "Receiver"
	}
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(e.status)
	_, _ = io.WriteString(w, xml.Header)
	_ = xml.NewEncoder(w).Encode(stsErrorResponse{Type: typ, Code: e.code, Message: e.message, RequestID: requestID})
}

// decodeJSON decodes a JSON 1.1 request body; an empty body is an empty
// object, as the SDK never sends one.
func decodeJSON(body []byte, v any) *apiError {
	if len(strings.TrimSpace(string(body))) == 0 {
		return nil
	}
	if err := json.Unmarshal(body, v); err != nil {
		return badRequest(codeSerialization, "Start of structure or map found where not expected, or malformed JSON.")
	}
	return nil
}

// authorize checks the caller against Options.Allow for one action on a
// resource known by any of names (name, ARN...).
func (s *Server) authorize(c credential, service, action string, names ...string) *apiError {
	patterns, restricted := s.allow[c.principal]
	if !restricted {
		return nil
	}
	for _, p := range patterns {
		for _, n := range names {
			if n != "" && glob.Match(p, n) {
				return nil
			}
		}
	}
	resource := names[len(names)-1]
	return badRequest(codeAccessDenied, "User: %s is not authorized to perform: %s:%s on resource: %s because no identity-based policy allows the %s:%s action",
		c.callerARN, service, action, resource, service, action)
}

// randomString returns n characters drawn from alphabet using crypto/rand.
func randomString(n int, alphabet string) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand panics instead)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

const (
	upperAlnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	mixedAlnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
)

// newRequestID returns a UUID-shaped request id.
func newRequestID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// epochSeconds is the JSON 1.1 timestamp encoding.
func epochSeconds(t time.Time) float64 {
	return float64(t.UnixMilli()) / 1000
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}
