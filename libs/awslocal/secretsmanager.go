package awslocal

import (
	"bytes"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Secrets Manager error codes.
const (
	codeResourceNotFound     = "ResourceNotFoundException"
	codeInvalidParameter     = "InvalidParameterException"
	codeInvalidRequest       = "InvalidRequestException"
	codeResourceExists       = "ResourceExistsException"
	codeThrottling           = "ThrottlingException"
	codeInternalServiceError = "InternalServiceError"
)

// Staging labels Secrets Manager manages itself.
const (
	stageCurrent  = "AWSCURRENT"
	stagePrevious = "AWSPREVIOUS"
)

// maxVersions is how many versions a secret keeps; older unlabelled
// ("deprecated") versions are dropped, as AWS does.
const maxVersions = 100

var secretNamePattern = regexp.MustCompile(`^[A-Za-z0-9/_+=.@-]{1,512}$`)

type secret struct {
	name        string
	arn         string
	description string
	created     time.Time
	versions    map[string]*secretVersion
	order       []string // version ids, oldest first
}

type secretVersion struct {
	id      string
	str     *string
	bin     []byte
	stages  []string
	created time.Time
}

type getSecretValueInput struct {
	SecretID     string `json:"SecretId"`
	VersionID    string `json:"VersionId"`
	VersionStage string `json:"VersionStage"`
}

type getSecretValueOutput struct {
	ARN           string   `json:"ARN"`
	Name          string   `json:"Name"`
	VersionID     string   `json:"VersionId"`
	SecretString  *string  `json:"SecretString,omitempty"`
	SecretBinary  []byte   `json:"SecretBinary,omitempty"`
	VersionStages []string `json:"VersionStages"`
	CreatedDate   float64  `json:"CreatedDate"`
}

type createSecretInput struct {
	Name               string  `json:"Name"`
	ClientRequestToken string  `json:"ClientRequestToken"`
	Description        string  `json:"Description"`
	SecretString       *string `json:"SecretString"`
	SecretBinary       []byte  `json:"SecretBinary"`
}

type createSecretOutput struct {
	ARN       string `json:"ARN"`
	Name      string `json:"Name"`
	VersionID string `json:"VersionId,omitempty"`
}

type putSecretValueInput struct {
	SecretID           string   `json:"SecretId"`
	ClientRequestToken string   `json:"ClientRequestToken"`
	SecretString       *string  `json:"SecretString"`
	SecretBinary       []byte   `json:"SecretBinary"`
	VersionStages      []string `json:"VersionStages"`
}

type putSecretValueOutput struct {
	ARN           string   `json:"ARN"`
	Name          string   `json:"Name"`
	VersionID     string   `json:"VersionId"`
	VersionStages []string `json:"VersionStages"`
}

// operation serves one JSON 1.1 operation for an authenticated caller.
type operation func(s *Server, caller credential, body []byte) (any, *apiError)

var secretsManagerOps = map[string]operation{
	"GetSecretValue": (*Server).getSecretValue,
	"CreateSecret":   (*Server).createSecret,
	"PutSecretValue": (*Server).putSecretValue,
}

// jsonOperation dispatches a Secrets Manager, SSM or ECR call.
func (s *Server) jsonOperation(service, op string, caller credential, body []byte) (any, *apiError) {
	ops := ssmOps
	switch service {
	case ServiceSecretsManager:
		ops = secretsManagerOps
	case ServiceECR:
		ops = ecrOps
	}
	fn, ok := ops[op]
	if !ok {
		return nil, badRequest(codeUnknownOperation, "awslocal does not implement %s.%s", service, truncate(op, 64))
	}
	return fn(s, caller, body)
}

func (s *Server) getSecretValue(caller credential, body []byte) (any, *apiError) {
	var in getSecretValueInput
	if aerr := decodeJSON(body, &in); aerr != nil {
		return nil, aerr
	}
	if aerr := validateSecretID(in.SecretID); aerr != nil {
		return nil, aerr
	}
	if in.VersionID != "" && (len(in.VersionID) < 32 || len(in.VersionID) > 64) {
		return nil, badRequest(codeInvalidParameter, "Invalid VersionId: it must be 32 to 64 characters long.")
	}
	if len(in.VersionStage) > 256 {
		return nil, badRequest(codeInvalidParameter, "Invalid VersionStage: it must be at most 256 characters long.")
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	sec := s.findSecret(in.SecretID)
	if aerr := s.authorize(caller, ServiceSecretsManager, "GetSecretValue", secretNames(sec, in.SecretID)...); aerr != nil {
		return nil, aerr
	}
	if sec == nil {
		return nil, badRequest(codeResourceNotFound, "Secrets Manager can't find the specified secret.")
	}
	stage := in.VersionStage
	if stage == "" && in.VersionID == "" {
		stage = stageCurrent
	}
	var v *secretVersion
	if in.VersionID != "" {
		v = sec.versions[in.VersionID]
		if v == nil || (stage != "" && !slices.Contains(v.stages, stage)) {
			return nil, badRequest(codeResourceNotFound, "Secrets Manager can't find the specified secret value for VersionId: %s", in.VersionID)
		}
	} else {
		v = sec.versionWithStage(stage)
		if v == nil {
			return nil, badRequest(codeResourceNotFound, "Secrets Manager can't find the specified secret value for staging label: %s", stage)
		}
	}
	return getSecretValueOutput{
		ARN:           sec.arn,
		Name:          sec.name,
		VersionID:     v.id,
		SecretString:  v.str,
		SecretBinary:  v.bin,
		VersionStages: slices.Clone(v.stages),
		CreatedDate:   epochSeconds(v.created),
	}, nil
}

func (s *Server) createSecret(caller credential, body []byte) (any, *apiError) {
	var in createSecretInput
	if aerr := decodeJSON(body, &in); aerr != nil {
		return nil, aerr
	}
	if !secretNamePattern.MatchString(in.Name) {
		return nil, badRequest(codeInvalidParameter, "Invalid name. Must be a valid name containing alphanumeric characters, or any of the following: -/_+=.@!")
	}
	if aerr := validateSecretValue(in.SecretString, in.SecretBinary, false); aerr != nil {
		return nil, aerr
	}
	if aerr := validateToken(in.ClientRequestToken); aerr != nil {
		return nil, aerr
	}
	if len(in.Description) > 2048 {
		return nil, badRequest(codeInvalidParameter, "Invalid Description: it must be at most 2048 characters long.")
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if aerr := s.authorize(caller, ServiceSecretsManager, "CreateSecret", in.Name); aerr != nil {
		return nil, aerr
	}
	sec, aerr := s.createSecretLocked(in.Name, in.Description)
	if aerr != nil {
		return nil, aerr
	}
	out := createSecretOutput{ARN: sec.arn, Name: sec.name}
	if in.SecretString != nil || in.SecretBinary != nil {
		v, aerr := s.addVersion(sec, tokenOrNew(in.ClientRequestToken), in.SecretString, in.SecretBinary, nil)
		if aerr != nil {
			return nil, aerr
		}
		out.VersionID = v.id
	}
	return out, nil
}

func (s *Server) putSecretValue(caller credential, body []byte) (any, *apiError) {
	var in putSecretValueInput
	if aerr := decodeJSON(body, &in); aerr != nil {
		return nil, aerr
	}
	if aerr := validateSecretID(in.SecretID); aerr != nil {
		return nil, aerr
	}
	if aerr := validateSecretValue(in.SecretString, in.SecretBinary, true); aerr != nil {
		return nil, aerr
	}
	if aerr := validateToken(in.ClientRequestToken); aerr != nil {
		return nil, aerr
	}
	if len(in.VersionStages) > 20 {
		return nil, badRequest(codeInvalidParameter, "Invalid VersionStages: a version can have at most 20 staging labels.")
	}
	for _, st := range in.VersionStages {
		if st == "" || len(st) > 256 {
			return nil, badRequest(codeInvalidParameter, "Invalid VersionStages: each label must be 1 to 256 characters long.")
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	sec := s.findSecret(in.SecretID)
	if aerr := s.authorize(caller, ServiceSecretsManager, "PutSecretValue", secretNames(sec, in.SecretID)...); aerr != nil {
		return nil, aerr
	}
	if sec == nil {
		return nil, badRequest(codeResourceNotFound, "Secrets Manager can't find the specified secret.")
	}
	v, aerr := s.addVersion(sec, tokenOrNew(in.ClientRequestToken), in.SecretString, in.SecretBinary, in.VersionStages)
	if aerr != nil {
		return nil, aerr
	}
	return putSecretValueOutput{ARN: sec.arn, Name: sec.name, VersionID: v.id, VersionStages: slices.Clone(v.stages)}, nil
}

// PutSecretString stores a string version of the named secret, creating the
// secret if needed, exactly as CreateSecret or PutSecretValue would: the new
// version becomes AWSCURRENT and the old current one AWSPREVIOUS. It returns
// the new version id.
func (s *Server) PutSecretString(name, value string) (versionID string, err error) {
	return s.putSecret(name, &value, nil)
}

// PutSecretBinary is PutSecretString for a binary secret.
func (s *Server) PutSecretBinary(name string, value []byte) (versionID string, err error) {
	if value == nil {
		value = []byte{}
	}
	return s.putSecret(name, nil, bytes.Clone(value))
}

func (s *Server) putSecret(name string, str *string, bin []byte) (string, error) {
	if !secretNamePattern.MatchString(name) {
		return "", fmt.Errorf("secret name %q: invalid", name)
	}
	if aerr := validateSecretValue(str, bin, true); aerr != nil {
		return "", fmt.Errorf("secret %q: %w", name, aerr)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sec := s.secrets[name]
	if sec == nil {
		var aerr *apiError
		if sec, aerr = s.createSecretLocked(name, ""); aerr != nil {
			return "", fmt.Errorf("create secret %q: %w", name, aerr)
		}
	}
	v, aerr := s.addVersion(sec, newRequestID(), str, bin, nil)
	if aerr != nil {
		return "", fmt.Errorf("put secret %q: %w", name, aerr)
	}
	return v.id, nil
}

// SecretARN returns the ARN of the named secret, or "" if there is none.
func (s *Server) SecretARN(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sec := s.secrets[name]; sec != nil {
		return sec.arn
	}
	return ""
}

// createSecretLocked adds an empty secret. Callers hold s.mu.
func (s *Server) createSecretLocked(name, description string) (*secret, *apiError) {
	if _, exists := s.secrets[name]; exists {
		return nil, badRequest(codeResourceExists, "The operation failed because the secret %s already exists.", name)
	}
	sec := &secret{
		name:        name,
		arn:         s.secretARNPrefix() + name + "-" + randomString(6, mixedAlnum),
		description: description,
		created:     s.now(),
		versions:    map[string]*secretVersion{},
	}
	s.secrets[name] = sec
	return sec, nil
}

func (s *Server) secretARNPrefix() string {
	return "arn:aws:secretsmanager:" + s.region + ":" + s.account + ":secret:"
}

// findSecret resolves a SecretId given as a name, a full ARN or a partial ARN
// (without the random suffix). Callers hold s.mu.
func (s *Server) findSecret(id string) *secret {
	if !strings.HasPrefix(id, "arn:") {
		return s.secrets[id] // names cannot contain ':'
	}
	for _, sec := range s.secrets {
		if sec.arn == id || s.secretARNPrefix()+sec.name == id {
			return sec
		}
	}
	return nil
}

// secretNames lists what Options.Allow patterns are matched against.
func secretNames(sec *secret, id string) []string {
	if sec == nil {
		return []string{id}
	}
	return []string{sec.name, sec.arn}
}

func (sec *secret) versionWithStage(stage string) *secretVersion {
	for _, v := range sec.versions {
		if slices.Contains(v.stages, stage) {
			return v
		}
	}
	return nil
}

// addVersion stores a new version and moves staging labels like AWS: the
// labels given (default AWSCURRENT) move to the new version, and when
// AWSCURRENT moves, the version that held it gets AWSPREVIOUS. Reusing a
// version id with the same value is an idempotent retry. Callers hold s.mu.
func (s *Server) addVersion(sec *secret, id string, str *string, bin []byte, stages []string) (*secretVersion, *apiError) {
	if v, ok := sec.versions[id]; ok {
		if equalValue(v, str, bin) {
			return v, nil
		}
		return nil, badRequest(codeResourceExists, "You can't modify an existing version, you can only create a new version.")
	}
	if len(stages) == 0 {
		stages = []string{stageCurrent}
	}
	v := &secretVersion{id: id, str: cloneString(str), bin: bytes.Clone(bin), created: s.now()}
	sec.versions[id] = v
	sec.order = append(sec.order, id)
	for _, st := range stages {
		if slices.Contains(v.stages, st) {
			continue
		}
		old := sec.versionWithStage(st)
		moveStage(sec, st, v)
		if st == stageCurrent && old != nil && !slices.Contains(stages, stagePrevious) {
			moveStage(sec, stagePrevious, old)
		}
	}
	// Drop the oldest unlabelled versions beyond the limit.
	for i := 0; len(sec.versions) > maxVersions && i < len(sec.order); {
		if old := sec.versions[sec.order[i]]; len(old.stages) == 0 {
			delete(sec.versions, old.id)
			sec.order = slices.Delete(sec.order, i, i+1)
			continue
		}
		i++
	}
	return v, nil
}

// moveStage removes a label from every version and gives it to v.
func moveStage(sec *secret, stage string, v *secretVersion) {
	for _, other := range sec.versions {
		other.stages = slices.DeleteFunc(other.stages, func(s string) bool { return s == stage })
	}
	v.stages = append(v.stages, stage)
}

func equalValue(v *secretVersion, str *string, bin []byte) bool {
	if (v.str == nil) != (str == nil) {
		return false
	}
	if str != nil {
		return *v.str == *str
	}
	return bytes.Equal(v.bin, bin)
}

func validateSecretID(id string) *apiError {
	if id == "" || len(id) > 2048 {
		return badRequest(codeInvalidParameter, "Invalid SecretId: it must be 1 to 2048 characters long.")
	}
	return nil
}

// validateSecretValue checks the SecretString/SecretBinary pair; required
// says whether one of them must be present.
func validateSecretValue(str *string, bin []byte, required bool) *apiError {
	switch {
	case str != nil && bin != nil:
		return badRequest(codeInvalidParameter, "You can't specify both a binary secret value and a string secret value in the same secret.")
	case required && str == nil && bin == nil:
		return badRequest(codeInvalidRequest, "You must provide either SecretString or SecretBinary.")
	case str != nil && len(*str) > 65536, len(bin) > 65536:
		return badRequest(codeInvalidParameter, "The secret value exceeds the 65536 byte limit.")
	}
	return nil
}

func validateToken(token string) *apiError {
	if token != "" && (len(token) < 32 || len(token) > 64) {
		return badRequest(codeInvalidParameter, "Invalid ClientRequestToken: it must be 32 to 64 characters long.")
	}
	return nil
}

func tokenOrNew(token string) string {
	if token == "" {
		return newRequestID()
	}
	return token
}

func cloneString(s *string) *string {
	if s == nil {
		return nil
	}
	c := *s
	return &c
}
