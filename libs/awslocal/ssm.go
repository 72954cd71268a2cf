package awslocal

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"
)

// ParameterType is an SSM parameter type.
type ParameterType string

// The SSM parameter types.
const (
	ParameterString       ParameterType = "String"
	ParameterStringList   ParameterType = "StringList"
	ParameterSecureString ParameterType = "SecureString"
)

// SSM error codes.
const (
	codeParameterNotFound      = "ParameterNotFound"
	codeParameterAlreadyExists = "ParameterAlreadyExists"
	codeValidation             = "ValidationException"
	codeInvalidNextToken       = "InvalidNextToken"
	codeHierarchyLevelLimit    = "HierarchyLevelLimitExceededException"
	codeInternalServerError    = "InternalServerError"
)

const (
	maxPageSize     = 10
	maxHierarchy    = 15
	standardMaxSize = 4096
	advancedMaxSize = 8192
)

// parameterNamePattern is the character set of names; length is checked
// apart (RE2 caps repeat counts at 1000).
var parameterNamePattern = regexp.MustCompile(`^[a-zA-Z0-9_.\-/]+$`)

// validName reports whether name uses allowed characters and fits.
func validName(name string) bool {
	return len(name) <= 2048 && parameterNamePattern.MatchString(name)
}

const pathRequirements = `The parameter doesn't meet the parameter name requirements. The parameter name must begin with a forward slash "/". It can't be prefixed with "aws" or "ssm" (case-insensitive). It must use only letters, numbers, or the following symbols: . (period), - (hyphen), _ (underscore). Special characters are not allowed. All sub-paths, if specified, must use the forward slash symbol "/". Valid example: /get/parameters2-/by1./path0_.`

type parameter struct {
	name     string
	typ      ParameterType
	value    string
	cipher   string // what a SecureString reads as without decryption
	version  int64
	tier     string
	modified time.Time
}

type parameterOutput struct {
	Name             string  `json:"Name"`
	Type             string  `json:"Type"`
	Value            string  `json:"Value"`
	Version          int64   `json:"Version"`
	LastModifiedDate float64 `json:"LastModifiedDate"`
	ARN              string  `json:"ARN"`
	DataType         string  `json:"DataType"`
}

type getParameterInput struct {
	Name           string `json:"Name"`
	WithDecryption bool   `json:"WithDecryption"`
}

type getParameterOutput struct {
	Parameter parameterOutput `json:"Parameter"`
}

type putParameterInput struct {
	Name      string  `json:"Name"`
	Value     *string `json:"Value"`
	Type      string  `json:"Type"`
	Overwrite bool    `json:"Overwrite"`
	Tier      string  `json:"Tier"`
	DataType  string  `json:"DataType"`
}

type putParameterOutput struct {
	Version int64  `json:"Version"`
	Tier    string `json:"Tier"`
}

type getParametersByPathInput struct {
	Path             string            `json:"Path"`
	Recursive        bool              `json:"Recursive"`
	WithDecryption   bool              `json:"WithDecryption"`
	MaxResults       *int64            `json:"MaxResults"`
	NextToken        string            `json:"NextToken"`
	ParameterFilters []json.RawMessage `json:"ParameterFilters"`
}

type getParametersByPathOutput struct {
	Parameters []parameterOutput `json:"Parameters"`
	NextToken  string            `json:"NextToken,omitempty"`
}

var ssmOps = map[string]operation{
	"GetParameter":        (*Server).getParameter,
	"PutParameter":        (*Server).putParameter,
	"GetParametersByPath": (*Server).getParametersByPath,
}

func (s *Server) getParameter(caller credential, body []byte) (any, *apiError) {
	var in getParameterInput
	if aerr := decodeJSON(body, &in); aerr != nil {
		return nil, aerr
	}
	name, isARN := strings.CutPrefix(in.Name, s.parameterARN("")+"/")
	if isARN {
		name = "/" + name
	}
	if in.Name == "" || len(in.Name) > 2048 {
		return nil, badRequest(codeValidation, "1 validation error detected: Value at 'name' failed to satisfy constraint: Member must have length between 1 and 2048")
	}
	if strings.Contains(name, ":") && !strings.HasPrefix(name, "arn:") {
		return nil, badRequest(codeValidation, "awslocal does not implement parameter selectors (name:version or name:label)")
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.params[name]
	if p == nil && isARN {
		p = s.params[name[1:]] // the ARN of "foo" is ...:parameter/foo
	}
	if p != nil {
		name = p.name
	}
	if aerr := s.authorize(caller, ServiceSSM, "GetParameter", name, s.parameterARN(name)); aerr != nil {
		return nil, aerr
	}
	if p == nil {
		return nil, &apiError{status: http.StatusBadRequest, code: codeParameterNotFound}
	}
	return getParameterOutput{Parameter: s.parameterOutput(p, in.WithDecryption)}, nil
}

func (s *Server) putParameter(caller credential, body []byte) (any, *apiError) {
	var in putParameterInput
	if aerr := decodeJSON(body, &in); aerr != nil {
		return nil, aerr
	}
	if aerr := validateParameterName(in.Name); aerr != nil {
		return nil, aerr
	}
	if in.Value == nil || *in.Value == "" {
		return nil, badRequest(codeValidation, "1 validation error detected: Value at 'value' failed to satisfy constraint: Member must have length greater than or equal to 1")
	}
	typ := ParameterType(in.Type)
	if in.Type != "" && !validType(typ) {
		return nil, badRequest(codeValidation, "1 validation error detected: Value '%s' at 'type' failed to satisfy constraint: Member must satisfy enum value set: [SecureString, StringList, String]", truncate(in.Type, 64))
	}
	if in.DataType != "" && in.DataType != "text" {
		return nil, badRequest(codeValidation, "awslocal only implements DataType text")
	}
	tier, aerr := parameterTier(in.Tier, len(*in.Value))
	if aerr != nil {
		return nil, aerr
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if aerr := s.authorize(caller, ServiceSSM, "PutParameter", in.Name, s.parameterARN(in.Name)); aerr != nil {
		return nil, aerr
	}
	old := s.params[in.Name]
	switch {
	case old != nil && !in.Overwrite:
		return nil, badRequest(codeParameterAlreadyExists, "The parameter already exists. To overwrite this value, set the overwrite option in the request to true.")
	case old == nil && typ == "":
		return nil, badRequest(codeValidation, "A parameter type is required when you create a parameter.")
	case typ == "":
		typ = old.typ
	}
	p := s.storeParameter(in.Name, typ, *in.Value, tier)
	return putParameterOutput{Version: p.version, Tier: p.tier}, nil
}

func (s *Server) getParametersByPath(caller credential, body []byte) (any, *apiError) {
	var in getParametersByPathInput
	if aerr := decodeJSON(body, &in); aerr != nil {
		return nil, aerr
	}
	if !strings.HasPrefix(in.Path, "/") || !validName(in.Path) || reservedName(in.Path) || strings.Contains(in.Path, "//") {
		return nil, badRequest(codeValidation, "%s", pathRequirements)
	}
	if strings.Count(strings.TrimSuffix(in.Path, "/"), "/") > maxHierarchy {
		return nil, badRequest(codeHierarchyLevelLimit, "A hierarchy can have a maximum of 15 levels.")
	}
	limit := int64(maxPageSize)
	if in.MaxResults != nil {
		limit = *in.MaxResults
		if limit < 1 {
			return nil, badRequest(codeValidation, "1 validation error detected: Value '%d' at 'maxResults' failed to satisfy constraint: Member must have value greater than or equal to 1", limit)
		}
		if limit > maxPageSize {
			return nil, badRequest(codeValidation, "1 validation error detected: Value '%d' at 'maxResults' failed to satisfy constraint: Member must have value less than or equal to 10", limit)
		}
	}
	if len(in.ParameterFilters) > 0 {
		return nil, badRequest(codeValidation, "awslocal does not implement ParameterFilters")
	}
	prefix := strings.TrimSuffix(in.Path, "/") + "/"
	after := ""
	if in.NextToken != "" {
		var ok bool
		if after, ok = decodeNextToken(in.NextToken, prefix, in.Recursive); !ok {
			return nil, badRequest(codeInvalidNextToken, "The specified token isn't valid.")
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if aerr := s.authorize(caller, ServiceSSM, "GetParametersByPath", in.Path, s.parameterARN(in.Path)); aerr != nil {
		return nil, aerr
	}
	var names []string
	for name := range s.params {
		rest, under := strings.CutPrefix(name, prefix)
		if under && name > after && (in.Recursive || !strings.Contains(rest, "/")) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	out := getParametersByPathOutput{Parameters: []parameterOutput{}}
	for i, name := range names {
		if int64(i) == limit {
			out.NextToken = encodeNextToken(prefix, in.Recursive, names[i-1])
			break
		}
		out.Parameters = append(out.Parameters, s.parameterOutput(s.params[name], in.WithDecryption))
	}
	return out, nil
}

// PutParameter stores a parameter, overwriting any existing one (and bumping
// its version), and returns the new version.
func (s *Server) PutParameter(name string, typ ParameterType, value string) (version int64, err error) {
	if aerr := validateParameterName(name); aerr != nil {
		return 0, fmt.Errorf("parameter %q: %w", name, aerr)
	}
	if !validType(typ) {
		return 0, fmt.Errorf("parameter %q: unknown type %q", name, typ)
	}
	tier, aerr := parameterTier("", len(value))
	if aerr != nil || value == "" {
		return 0, fmt.Errorf("parameter %q: value must be 1 to %d bytes", name, advancedMaxSize)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.storeParameter(name, typ, value, tier).version, nil
}

// storeParameter creates or overwrites a parameter. Callers hold s.mu.
func (s *Server) storeParameter(name string, typ ParameterType, value, tier string) *parameter {
	p := s.params[name]
	if p == nil {
		p = &parameter{name: name}
		s.params[name] = p
	}
	p.typ, p.value, p.tier, p.modified = typ, value, tier, s.now()
	p.version++
	p.cipher = ""
	if typ == ParameterSecureString {
		// Opaque, like a KMS ciphertext blob: it does not contain the value.
		p.cipher = "AQICAHh" + randomString(len(value)/3*4+120, mixedAlnum+"+/")
	}
	return p
}

func (s *Server) parameterOutput(p *parameter, decrypt bool) parameterOutput {
	value := p.value
	if p.typ == ParameterSecureString && !decrypt {
		value = p.cipher
	}
	return parameterOutput{
		Name:             p.name,
		Type:             string(p.typ),
		Value:            value,
		Version:          p.version,
		LastModifiedDate: epochSeconds(p.modified),
		ARN:              s.parameterARN(p.name),
		DataType:         "text",
	}
}

// parameterARN is the ARN of a parameter name ("/a/b" → "...:parameter/a/b",
// "a" → "...:parameter/a").
func (s *Server) parameterARN(name string) string {
	prefix := "arn:aws:ssm:" + s.region + ":" + s.account + ":parameter"
	if name == "" {
		return prefix
	}
	return prefix + "/" + strings.TrimPrefix(name, "/")
}

func validateParameterName(name string) *apiError {
	switch {
	case !validName(name) || strings.Contains(name, "//") || strings.HasSuffix(name, "/"):
		return badRequest(codeValidation, "Parameter name: can't be prefixed with \"aws\" or \"ssm\" (case-insensitive). If formed as a path, it can consist of sub-paths divided by slash symbol; each sub-path can be formed as a mix of letters, numbers and the following 3 symbols .-_")
	case strings.Contains(name, "/") && !strings.HasPrefix(name, "/"):
		return badRequest(codeValidation, "Parameter name must be a fully qualified name.")
	case reservedName(name):
		return badRequest(codeValidation, "No access to reserved parameter name: %s.", name)
	case strings.Count(name, "/") > maxHierarchy:
		return badRequest(codeHierarchyLevelLimit, "A hierarchy can have a maximum of 15 levels.")
	}
	return nil
}

// reservedName reports names whose first segment starts with "aws" or "ssm".
func reservedName(name string) bool {
	first := strings.ToLower(strings.TrimPrefix(name, "/"))
	return strings.HasPrefix(first, "aws") || strings.HasPrefix(first, "ssm")
}

func validType(t ParameterType) bool {
	return t == ParameterString || t == ParameterStringList || t == ParameterSecureString
}

// parameterTier picks the tier for a value size, like Intelligent-Tiering.
func parameterTier(requested string, size int) (string, *apiError) {
	switch requested {
	case "", "Standard", "Intelligent-Tiering":
		if size <= standardMaxSize {
			return "Standard", nil
		}
		if requested == "Standard" {
			return "", badRequest(codeValidation, "Standard tier parameters support a maximum parameter value of 4096 characters. To create a larger parameter value, upgrade the parameter to use the advanced-parameter tier.")
		}
		fallthrough
	case "Advanced":
		if size > advancedMaxSize {
			return "", badRequest(codeValidation, "Advanced tier parameters support a maximum parameter value of 8192 characters.")
		}
		return "Advanced", nil
	default:
		return "", badRequest(codeValidation, "1 validation error detected: Value '%s' at 'tier' failed to satisfy constraint: Member must satisfy enum value set: [Advanced, Intelligent-Tiering, Standard]", truncate(requested, 64))
	}
}

// encodeNextToken binds a continuation point to the query it came from.
func encodeNextToken(prefix string, recursive bool, last string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf("%s\x00%t\x00%s", prefix, recursive, last)))
}

func decodeNextToken(token, prefix string, recursive bool) (last string, ok bool) {
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return "", false
	}
	parts := strings.Split(string(raw), "\x00")
	if len(parts) != 3 || parts[0] != prefix || parts[1] != fmt.Sprint(recursive) || !strings.HasPrefix(parts[2], prefix) {
		return "", false
	}
	return parts[2], true
}
