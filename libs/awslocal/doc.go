// Package awslocal is an AWS-compatible test server for the AWS calls Piggy
// makes: STS AssumeRoleWithWebIdentity (query protocol), Secrets Manager
// GetSecretValue, CreateSecret and PutSecretValue (JSON 1.1), SSM
// GetParameter, GetParametersByPath and PutParameter (JSON 1.1) and ECR
// GetAuthorizationToken (JSON 1.1; the token is base64("AWS:<password>")
// with the password [Server.ECRPassword] returns, for test registries).
//
// It is meant to be driven by the real aws-sdk-go-v2 clients, pointed at it
// with AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_STS (the web identity credential
// provider's own STS client only follows the latter). It behaves like AWS
// where Piggy can observe it:
//
//   - error shapes: __type and X-Amzn-ErrorType with the AWS HTTP status for
//     JSON services, ErrorResponse/Error{Type,Code,Message} for STS;
//   - Secrets Manager, SSM and ECR requests must carry a SigV4 Authorization header
//     scoped to the right service and the server's region, and the signature
//     is verified for real with the secret key the server knows: either keys
//     issued by AssumeRoleWithWebIdentity (the session token must match, and
//     expired keys get ExpiredTokenException) or static keys from Options;
//   - web identity tokens are checked as JWTs and, when Options.WebIdentity
//     is set, their RS256 signature, issuer, audience and expiry are verified
//     against a JSON Web Key Set;
//   - staging labels (AWSCURRENT, AWSPREVIOUS) move on PutSecretValue, SSM
//     pagination caps MaxResults at 10 and non-recursive paths return direct
//     children only.
//
// Tests can restrict what a role may read (Options.Allow), which token
// subjects may assume a role (Options.Trust), inject faults (throttling,
// 5xx, latency, dropped connections) with [Server.InjectFault] and count
// calls with [Server.Calls]. [Server.AdminHandler] exposes the fault and
// counter controls over HTTP for the piggy-awslocal binary.
//
// A Server is an [http.Handler]; it starts no goroutines. Serve it with
// net/http/httptest in tests or with http.Server in the binary. It never logs
// secret values, parameter values, tokens or keys.
package awslocal
