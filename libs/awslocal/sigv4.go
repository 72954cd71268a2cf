package awslocal

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// SigV4 error codes of the JSON services.
const (
	codeMissingAuth         = "MissingAuthenticationTokenException"
	codeIncompleteSignature = "IncompleteSignatureException"
	codeInvalidSignature    = "InvalidSignatureException"
	codeUnrecognizedClient  = "UnrecognizedClientException"
	codeExpiredTokenJSON    = "ExpiredTokenException"
)

const (
	sigV4Algorithm = "AWS4-HMAC-SHA256"
	amzDateFormat  = "20060102T150405Z"
	maxClockSkew   = 15 * time.Minute
)

// authorization is a parsed SigV4 Authorization header.
type authorization struct {
	accessKeyID   string
	date          string // YYYYMMDD
	region        string
	service       string
	terminator    string
	signedHeaders []string
	signature     string
}

// parseAuthorization parses
// "AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/ssm/aws4_request, SignedHeaders=host;x-amz-date, Signature=hex".
func parseAuthorization(h string) (authorization, *apiError) {
	var a authorization
	alg, rest, _ := strings.Cut(strings.TrimSpace(h), " ")
	if alg != sigV4Algorithm {
		return a, badRequest(codeIncompleteSignature, "Unsupported AWS 'algorithm': '%s'", truncate(alg, 64))
	}
	var credential, signed string
	var haveCredential, haveSigned, haveSignature bool
	for _, field := range strings.Split(rest, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(field), "=")
		if !ok {
			continue
		}
		switch k {
		case "Credential":
			credential, haveCredential = v, true
		case "SignedHeaders":
			signed, haveSigned = v, true
		case "Signature":
			a.signature, haveSignature = v, true
		}
	}
	var missing []string
	if !haveCredential {
		missing = append(missing, "Authorization header requires 'Credential' parameter.")
	}
	if !haveSigned {
		missing = append(missing, "Authorization header requires 'SignedHeaders' parameter.")
	}
	if !haveSignature {
		missing = append(missing, "Authorization header requires 'Signature' parameter.")
	}
	if len(missing) > 0 {
		return a, badRequest(codeIncompleteSignature, "%s", strings.Join(missing, " "))
	}
	parts := strings.Split(credential, "/")
	if len(parts) != 5 || parts[0] == "" {
		return a, badRequest(codeIncompleteSignature, "Credential should have 5 slash-separated parts: <access key id>/<date>/<region>/<service>/aws4_request.")
	}
	a.accessKeyID, a.date, a.region, a.service, a.terminator = parts[0], parts[1], parts[2], parts[3], parts[4]
	a.signedHeaders = strings.Split(signed, ";")
	if !slices.IsSorted(a.signedHeaders) || !slices.Contains(a.signedHeaders, "host") {
		return a, badRequest(codeIncompleteSignature, "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization; SignedHeaders must be lower-case and sorted.")
	}
	for _, name := range a.signedHeaders {
		if name == "" || name != strings.ToLower(name) {
			return a, badRequest(codeIncompleteSignature, "SignedHeaders must be lower-case and sorted.")
		}
	}
	if len(a.signature) != 64 {
		return a, badRequest(codeIncompleteSignature, "Signature must be 64 hexadecimal characters.")
	}
	return a, nil
}

// authenticate verifies a request's SigV4 signature against the key the
// server knows and returns the caller.
func (s *Server) authenticate(r *http.Request, service string, body []byte) (credential, *apiError) {
	var none credential
	header := r.Header.Get("Authorization")
	if header == "" {
		return none, badRequest(codeMissingAuth, "Missing Authentication Token")
	}
	a, aerr := parseAuthorization(header)
	if aerr != nil {
		return none, aerr
	}
	amzDate := r.Header.Get("X-Amz-Date")
	if amzDate == "" {
		return none, badRequest(codeIncompleteSignature, "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.")
	}
	signedAt, err := time.Parse(amzDateFormat, amzDate)
	if err != nil {
		return none, badRequest(codeIncompleteSignature, "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
	}
	switch {
	case a.date != amzDate[:8]:
		return none, badRequest(codeInvalidSignature, "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '%s' != '%s'", truncate(a.date, 16), amzDate[:8])
	case a.region != s.region:
		return none, badRequest(codeInvalidSignature, "Credential should be scoped to a valid region. ")
	case a.service != service:
		return none, badRequest(codeInvalidSignature, "Credential should be scoped to correct service: '%s'. ", service)
	case a.terminator != "aws4_request":
		return none, badRequest(codeInvalidSignature, "Credential should be scoped with a valid terminator: 'aws4_request', not '%s'.", truncate(a.terminator, 32))
	}
	now := s.now()
	if d := now.Sub(signedAt); d > maxClockSkew || d < -maxClockSkew {
		return none, badRequest(codeInvalidSignature, "Signature expired: %s is now earlier than %s (%s - 15 min.)",
			amzDate, now.Add(-maxClockSkew).UTC().Format(amzDateFormat), now.UTC().Format(amzDateFormat))
	}

	s.mu.Lock()
	c, known := s.creds[a.accessKeyID]
	s.mu.Unlock()
	token := r.Header.Get("X-Amz-Security-Token")
	if !known || subtle.ConstantTimeCompare([]byte(token), []byte(c.sessionToken)) != 1 {
		return none, badRequest(codeUnrecognizedClient, "The security token included in the request is invalid.")
	}
	if !c.expires.IsZero() && !now.Before(c.expires) {
		return none, badRequest(codeExpiredTokenJSON, "The security token included in the request is expired")
	}

	want := signature(c.secretKey, a, amzDate, canonicalRequest(r, a.signedHeaders, body))
	if !hmac.Equal([]byte(want), []byte(a.signature)) {
		return none, badRequest(codeInvalidSignature, "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.")
	}
	return c, nil
}

// canonicalRequest builds the SigV4 canonical request: method, URI (escaped
// once more, as for every service but S3), canonical query, canonical
// headers, signed headers and the hex SHA-256 of the payload actually
// received.
func canonicalRequest(r *http.Request, signedHeaders []string, body []byte) string {
	path := r.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	var b strings.Builder
	b.WriteString(r.Method)
	b.WriteByte('\n')
	b.WriteString(awsEscape(path, false))
	b.WriteByte('\n')
	b.WriteString(canonicalQuery(r.URL.RawQuery))
	b.WriteByte('\n')
	for _, name := range signedHeaders {
		b.WriteString(name)
		b.WriteByte(':')
		b.WriteString(canonicalHeaderValue(r, name))
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	b.WriteString(strings.Join(signedHeaders, ";"))
	b.WriteByte('\n')
	sum := sha256.Sum256(body)
	b.WriteString(hex.EncodeToString(sum[:]))
	return b.String()
}

// canonicalHeaderValue returns a header's values, each trimmed with inner
// runs of spaces collapsed, joined by commas. Host and Content-Length are not
// in r.Header on the server side.
func canonicalHeaderValue(r *http.Request, name string) string {
	var values []string
	switch name {
	case "host":
		values = []string{r.Host}
	case "content-length":
		values = r.Header.Values("Content-Length")
		if len(values) == 0 && r.ContentLength >= 0 {
			values = []string{strconv.FormatInt(r.ContentLength, 10)}
		}
	default:
		values = r.Header.Values(name)
	}
	cleaned := make([]string, len(values)) // values may alias r.Header
	for i, v := range values {
		cleaned[i] = collapseSpaces(v)
	}
	return strings.Join(cleaned, ",")
}

// collapseSpaces trims a header value and turns runs of spaces into one, as
// the SigV4 spec (and the SDK) do; other whitespace is kept.
func collapseSpaces(v string) string {
	v = strings.TrimSpace(v)
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] == ' ' && i > 0 && v[i-1] == ' ' {
			continue
		}
		b.WriteByte(v[i])
	}
	return b.String()
}

// canonicalQuery encodes each name and value (RFC 3986 unreserved characters
// kept, space as %20) and sorts after encoding, as SigV4 requires.
func canonicalQuery(raw string) string {
	if raw == "" {
		return ""
	}
	values, err := url.ParseQuery(raw)
	if err != nil {
		// The client signed what it sent; a query Go cannot parse will not
		// match, which is the right outcome.
		return raw
	}
	var pairs []string
	for k, vs := range values {
		for _, v := range vs {
			pairs = append(pairs, awsEscape(k, true)+"="+awsEscape(v, true))
		}
	}
	slices.Sort(pairs)
	return strings.Join(pairs, "&")
}

// awsEscape percent-encodes every byte outside A-Z a-z 0-9 - . _ ~ (and "/"
// unless encodeSlash).
func awsEscape(s string, encodeSlash bool) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9',
			c == '-', c == '.', c == '_', c == '~', c == '/' && !encodeSlash:
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// signature derives the signing key and signs the string to sign.
func signature(secretKey string, a authorization, amzDate, canonical string) string {
	hashed := sha256.Sum256([]byte(canonical))
	scope := a.date + "/" + a.region + "/" + a.service + "/" + a.terminator
	stringToSign := sigV4Algorithm + "\n" + amzDate + "\n" + scope + "\n" + hex.EncodeToString(hashed[:])
	key := hmacSHA256([]byte("AWS4"+secretKey), a.date)
	key = hmacSHA256(key, a.region)
	key = hmacSHA256(key, a.service)
	key = hmacSHA256(key, a.terminator)
	return hex.EncodeToString(hmacSHA256(key, stringToSign))
}

func hmacSHA256(key []byte, data string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(data))
	return h.Sum(nil)
}
