package awslocal

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/piggysec/piggy/libs/glob"
)

// WebIdentity configures verification of web identity tokens, as an IAM
// OIDC identity provider does.
type WebIdentity struct {
	// Issuer is the required "iss" claim, e.g. the Kubernetes service account
	// issuer URL.
	Issuer string
	// Audience, when set, must be one of the token's "aud" values (IRSA uses
	// "sts.amazonaws.com").
	Audience string
	// JWKS is a JSON Web Key Set (such as a kube-apiserver's /openid/v1/jwks)
	// holding the RSA public keys tokens are signed with.
	JWKS []byte
}

// verifier is a parsed WebIdentity.
type verifier struct {
	issuer   string
	audience string
	keys     map[string]*rsa.PublicKey // by kid ("" for keys without one)
}

func newVerifier(w WebIdentity) (*verifier, error) {
	if w.Issuer == "" {
		return nil, errors.New("web identity: issuer is required")
	}
	keys, err := parseJWKS(w.JWKS)
	if err != nil {
		return nil, fmt.Errorf("web identity: %w", err)
	}
	return &verifier{issuer: w.Issuer, audience: w.Audience, keys: keys}, nil
}

// parseJWKS returns the RSA keys of a JSON Web Key Set; other key types are
// skipped.
func parseJWKS(data []byte) (map[string]*rsa.PublicKey, error) {
	var set struct {
		Keys []struct {
			Kty string `json:"kty"`
			Kid string `json:"kid"`
			Use string `json:"use"`
			N   string `json:"n"`
			E   string `json:"e"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("parse JWKS: %w", err)
	}
	keys := map[string]*rsa.PublicKey{}
	for _, k := range set.Keys {
		if k.Kty != "RSA" || (k.Use != "" && k.Use != "sig") {
			continue
		}
		n, err1 := base64.RawURLEncoding.DecodeString(strings.TrimRight(k.N, "="))
		e, err2 := base64.RawURLEncoding.DecodeString(strings.TrimRight(k.E, "="))
		if err1 != nil || err2 != nil || len(n) == 0 || len(e) == 0 || len(e) > 4 {
			return nil, fmt.Errorf("parse JWKS: key %q: bad modulus or exponent", k.Kid)
		}
		exp := int(new(big.Int).SetBytes(e).Int64())
		if exp < 3 {
			return nil, fmt.Errorf("parse JWKS: key %q: bad exponent", k.Kid)
		}
		keys[k.Kid] = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: exp}
	}
	if len(keys) == 0 {
		return nil, errors.New("parse JWKS: no RSA signing keys")
	}
	return keys, nil
}

// STS error codes.
const (
	codeInvalidIdentityToken = "InvalidIdentityToken"
	codeExpiredToken         = "ExpiredTokenException"
	codeAccessDeniedSTS      = "AccessDenied"
	codeValidationError      = "ValidationError"
)

var (
	roleARNPattern     = regexp.MustCompile(`^arn:aws:iam::([0-9]{12}):role/((?:[\x21-\x7e]+/)*)([\w+=,.@-]{1,64})$`)
	sessionNamePattern = regexp.MustCompile(`^[\w+=,.@-]{2,64}$`)
)

// assumeRoleResponse is the AssumeRoleWithWebIdentity response document.
type assumeRoleResponse struct {
	XMLName xml.Name         `xml:"https://sts.amazonaws.com/doc/2011-06-15/ AssumeRoleWithWebIdentityResponse"`
	Result  assumeRoleResult `xml:"AssumeRoleWithWebIdentityResult"`
	Meta    struct {
		RequestID string `xml:"RequestId"`
	} `xml:"ResponseMetadata"`
}

type assumeRoleResult struct {
	SubjectFromWebIdentityToken string `xml:"SubjectFromWebIdentityToken"`
	Audience                    string `xml:"Audience,omitempty"`
	AssumedRoleUser             struct {
		Arn           string `xml:"Arn"`
		AssumedRoleID string `xml:"AssumedRoleId"`
	} `xml:"AssumedRoleUser"`
	Credentials struct {
		AccessKeyID     string `xml:"AccessKeyId"`
		SecretAccessKey string `xml:"SecretAccessKey"`
		SessionToken    string `xml:"SessionToken"`
		Expiration      string `xml:"Expiration"`
	} `xml:"Credentials"`
	Provider string `xml:"Provider,omitempty"`
}

// parseForm merges the URL query and, for form posts, the body, as the query
// protocol allows both.
func parseForm(r *http.Request, body []byte) (url.Values, error) {
	form, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, err
	}
	if len(body) > 0 {
		b, err := url.ParseQuery(string(body))
		if err != nil {
			return nil, err
		}
		for k, v := range b {
			form[k] = append(form[k], v...)
		}
	}
	return form, nil
}

// sts serves one query-protocol call.
func (s *Server) sts(form url.Values, requestID string) (any, *apiError) {
	action := first(form["Action"])
	switch {
	case action == "":
		return nil, badRequest("MissingAction", "Missing Action")
	case action != "AssumeRoleWithWebIdentity":
		return nil, badRequest("InvalidAction", "Could not find operation %s for version %s", action, first(form["Version"]))
	case first(form["Version"]) != "2011-06-15":
		return nil, badRequest("InvalidAction", "Could not find operation %s for version %s", action, first(form["Version"]))
	}
	return s.assumeRoleWithWebIdentity(form, requestID)
}

func (s *Server) assumeRoleWithWebIdentity(form url.Values, requestID string) (any, *apiError) {
	roleARN := first(form["RoleArn"])
	sessionName := first(form["RoleSessionName"])
	token := first(form["WebIdentityToken"])

	var problems []string
	if roleARN == "" {
		problems = append(problems, "Value null at 'roleArn' failed to satisfy constraint: Member must not be null")
	}
	if !sessionNamePattern.MatchString(sessionName) {
		problems = append(problems, fmt.Sprintf("Value '%s' at 'roleSessionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*", truncate(sessionName, 64)))
	}
	if len(token) < 4 || len(token) > 20000 {
		problems = append(problems, "Value at 'webIdentityToken' failed to satisfy constraint: Member must have length between 4 and 20000")
	}
	duration := s.duration
	if d := first(form["DurationSeconds"]); d != "" {
		n, err := strconv.Atoi(d)
		if err != nil || n < 900 || n > 43200 {
			problems = append(problems, fmt.Sprintf("Value '%s' at 'durationSeconds' failed to satisfy constraint: Member must have value between 900 and 43200", truncate(d, 16)))
		} else {
			duration = time.Duration(n) * time.Second
		}
	}
	if len(problems) > 0 {
		return nil, badRequest(codeValidationError, "%d validation error%s detected: %s", len(problems), plural(len(problems)), strings.Join(problems, "; "))
	}
	m := roleARNPattern.FindStringSubmatch(roleARN)
	if m == nil {
		return nil, badRequest(codeValidationError, "Request ARN is invalid")
	}
	account, roleName := m[1], m[3]

	now := s.now()
	claims, aerr := s.checkToken(token, now)
	if aerr != nil {
		return nil, aerr
	}
	if s.trust != nil {
		subjects, ok := s.trust[roleARN]
		trusted := ok && len(subjects) == 0
		for _, p := range subjects {
			trusted = trusted || glob.Match(p, claims.Subject)
		}
		if !trusted {
			return nil, &apiError{status: http.StatusForbidden, code: codeAccessDeniedSTS, message: "Not authorized to perform sts:AssumeRoleWithWebIdentity"}
		}
	}

	var out assumeRoleResponse
	res := &out.Result
	res.SubjectFromWebIdentityToken = claims.Subject
	res.Audience = first(claims.Audience)
	res.Provider = claims.Issuer
	res.AssumedRoleUser.Arn = "arn:aws:sts::" + account + ":assumed-role/" + roleName + "/" + sessionName
	sum := sha256.Sum256([]byte(roleARN))
	res.AssumedRoleUser.AssumedRoleID = "AROA" + strings.ToUpper(base32ish(sum[:], 17)) + ":" + sessionName

	expires := now.Add(duration).UTC()
	c := credential{
		secretKey:    randomString(40, mixedAlnum+"+/"),
		sessionToken: "FwoGZXIvYXdzE" + randomString(300, mixedAlnum+"+/"),
		expires:      expires,
		principal:    roleARN,
		callerARN:    res.AssumedRoleUser.Arn,
	}
	keyID := "ASIA" + randomString(16, upperAlnum)
	s.mu.Lock()
	s.pruneCredentials(now)
	s.creds[keyID] = c
	s.mu.Unlock()

	res.Credentials.AccessKeyID = keyID
	res.Credentials.SecretAccessKey = c.secretKey
	res.Credentials.SessionToken = c.sessionToken
	res.Credentials.Expiration = expires.Format(time.RFC3339)
	out.Meta.RequestID = requestID
	return out, nil
}

// pruneCredentials forgets session keys that expired a day ago; until then
// they still earn ExpiredTokenException rather than an unknown-key error.
// Callers hold s.mu.
func (s *Server) pruneCredentials(now time.Time) {
	for id, c := range s.creds {
		if !c.expires.IsZero() && now.Sub(c.expires) > 24*time.Hour {
			delete(s.creds, id)
		}
	}
}

// tokenClaims are the JWT claims STS looks at.
type tokenClaims struct {
	Issuer    string       `json:"iss"`
	Subject   string       `json:"sub"`
	Audience  audienceList `json:"aud"`
	Expiry    *json.Number `json:"exp"`
	NotBefore *json.Number `json:"nbf"`
}

// audienceList accepts "aud" as a string or an array of strings.
type audienceList []string

func (a *audienceList) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*a = audienceList{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*a = many
	return nil
}

var errInvalidToken = &apiError{status: http.StatusBadRequest, code: codeInvalidIdentityToken,
	message: "The web identity token that was passed could not be validated by AWS. Get a new identity token from the identity provider and then retry the request."}

// checkToken parses a compact JWS and, when a verifier is configured, checks
// its signature, issuer and audience. Expiry is checked whenever "exp" is
// present (and required when verifying).
func (s *Server) checkToken(token string, now time.Time) (tokenClaims, *apiError) {
	var claims tokenClaims
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return claims, badRequest(codeInvalidIdentityToken, "The ID Token provided is not a valid JWT. (You may see this error if you sent an Access Token)")
	}
	rawHeader, err1 := decodeSegment(parts[0])
	rawClaims, err2 := decodeSegment(parts[1])
	sig, err3 := decodeSegment(parts[2])
	var header struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}
	if err1 != nil || err2 != nil || err3 != nil ||
		json.Unmarshal(rawHeader, &header) != nil || json.Unmarshal(rawClaims, &claims) != nil {
		return claims, badRequest(codeInvalidIdentityToken, "The ID Token provided is not a valid JWT. (You may see this error if you sent an Access Token)")
	}

	if v := s.webIdentity; v != nil {
		if header.Alg != "RS256" {
			return claims, errInvalidToken
		}
		if !v.verifySignature(header.Kid, parts[0]+"."+parts[1], sig) {
			return claims, errInvalidToken
		}
		if claims.Issuer != v.issuer {
			return claims, badRequest(codeInvalidIdentityToken, "No OpenIDConnect provider found in your account for %s", truncate(claims.Issuer, 256))
		}
		if v.audience != "" && !slices.Contains(claims.Audience, v.audience) {
			return claims, badRequest(codeInvalidIdentityToken, "Incorrect token audience")
		}
		if claims.Expiry == nil {
			return claims, errInvalidToken
		}
	}
	if claims.Expiry != nil {
		exp, err := claims.Expiry.Int64()
		if err != nil {
			return claims, errInvalidToken
		}
		if now.Unix() >= exp {
			return claims, badRequest(codeExpiredToken, "Token expired: current date/time %d must be before the expiration date/time %d", now.Unix(), exp)
		}
	}
	if claims.NotBefore != nil {
		if nbf, err := claims.NotBefore.Int64(); err != nil || now.Unix()+300 < nbf {
			return claims, errInvalidToken
		}
	}
	return claims, nil
}

func (v *verifier) verifySignature(kid, signed string, sig []byte) bool {
	digest := sha256.Sum256([]byte(signed))
	if key, ok := v.keys[kid]; ok {
		return rsa.VerifyPKCS1v15(key, crypto.SHA256, digest[:], sig) == nil
	}
	if kid != "" {
		return false
	}
	for _, key := range v.keys {
		if rsa.VerifyPKCS1v15(key, crypto.SHA256, digest[:], sig) == nil {
			return true
		}
	}
	return false
}

// decodeSegment decodes base64url with or without padding.
func decodeSegment(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}

// base32ish encodes b with an upper-case alphabet, n characters long.
func base32ish(b []byte, n int) string {
	var buf bytes.Buffer
	for i := 0; i < n; i++ {
		buf.WriteByte(upperAlnum[int(b[i%len(b)])%len(upperAlnum)])
	}
	return buf.String()
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
