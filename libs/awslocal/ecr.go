package awslocal

import (
	"encoding/base64"
)

// ecrTargetPrefix is the X-Amz-Target prefix of ECR's JSON 1.1 operations.
const ecrTargetPrefix = "AmazonEC2ContainerRegistry_V20150921."

// ECR error codes.
const (
	codeECRServer           = "ServerException"
	codeECRInvalidParameter = "InvalidParameterException"
)

const (
	// maxECRRegistryIDs is AWS's limit on registryIds.
	maxECRRegistryIDs = 10
	// ecrAuthorizationResource is what Options.Allow patterns are matched
	// against: in IAM, GetAuthorizationToken has no resource ("*").
	ecrAuthorizationResource = "*"
)

var ecrOps = map[string]operation{
	"GetAuthorizationToken": (*Server).getAuthorizationToken,
}

type getAuthorizationTokenInput struct {
	RegistryIDs []string `json:"registryIds"`
}

type authorizationData struct {
	AuthorizationToken string  `json:"authorizationToken"`
	ExpiresAt          float64 `json:"expiresAt"`
	ProxyEndpoint      string  `json:"proxyEndpoint"`
}

type getAuthorizationTokenOutput struct {
	AuthorizationData []authorizationData `json:"authorizationData"`
}

// getAuthorizationToken issues a registry token: base64("AWS:<password>")
// with the server's ECR password, valid for Options.ECRTokenDuration. Like
// AWS, it returns one entry per requested registry id, or one for the
// server's account when none is given.
func (s *Server) getAuthorizationToken(caller credential, body []byte) (any, *apiError) {
	var in getAuthorizationTokenInput
	if aerr := decodeJSON(body, &in); aerr != nil {
		return nil, aerr
	}
	if len(in.RegistryIDs) > maxECRRegistryIDs {
		return nil, badRequest(codeECRInvalidParameter, "registryIds: at most %d registry ids may be given.", maxECRRegistryIDs)
	}
	for _, id := range in.RegistryIDs {
		if !accountIDPattern.MatchString(id) {
			return nil, badRequest(codeECRInvalidParameter, "Invalid parameter at 'registryIds' failed to satisfy constraint: 'Member must satisfy regular expression pattern: [0-9]{12}'")
		}
	}
	if aerr := s.authorize(caller, ServiceECR, "GetAuthorizationToken", ecrAuthorizationResource); aerr != nil {
		return nil, aerr
	}
	ids := in.RegistryIDs
	if len(ids) == 0 {
		ids = []string{s.account}
	}
	s.mu.Lock()
	token := base64.StdEncoding.EncodeToString([]byte("AWS:" + s.ecrPass))
	s.mu.Unlock()
	expires := epochSeconds(s.now().Add(s.ecrDuration))
	out := getAuthorizationTokenOutput{}
	for _, id := range ids {
		out.AuthorizationData = append(out.AuthorizationData, authorizationData{
			AuthorizationToken: token,
			ExpiresAt:          expires,
			ProxyEndpoint:      "https://" + id + ".dkr.ecr." + s.region + ".amazonaws.com",
		})
	}
	return out, nil
}

// ECRPassword returns the registry password carried by the tokens
// GetAuthorizationToken issues (user "AWS"), so a test registry can require
// it.
func (s *Server) ECRPassword() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ecrPass
}

// RotateECRPassword replaces the ECR password, as if every token issued so
// far had expired, and returns the new one.
func (s *Server) RotateECRPassword() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ecrPass = randomString(40, mixedAlnum)
	return s.ecrPass
}
