// Command piggy-awslocal serves the awslocal AWS-compatible test server (STS
// AssumeRoleWithWebIdentity, Secrets Manager, SSM Parameter Store, ECR
// GetAuthorizationToken) for local stacks and end-to-end tests. Point the AWS
// SDK at it with AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_STS.
//
// Every flag can also be set through an environment variable, AWSLOCAL_ and
// the flag name in upper case with "_" for "-" (-tls-cert is
// AWSLOCAL_TLS_CERT); flags win. Run with -h for the list.
//
// The -seed file holds the initial state and access rules:
//
//	{
//	  "secrets": [
//	    {"name": "apps/db", "secretString": "v1"},
//	    {"name": "apps/db", "secretString": "v2"},
//	    {"name": "apps/cert", "secretBinary": "AAEC"}
//	  ],
//	  "parameters": [{"name": "/apps/web/url", "type": "String", "value": "https://x"}],
//	  "credentials": [{"accessKeyId": "AKIA...", "secretAccessKey": "...", "principal": "arn:aws:iam::123456789012:user/dev"}],
//	  "trust": {"arn:aws:iam::111122223333:role/web": ["system:serviceaccount:apps:web"]},
//	  "allow": {"arn:aws:iam::111122223333:role/web": ["apps/*", "/apps/web", "/apps/web/*"]}
//	}
//
// A secret listed again gets a new version (the earlier one becomes
// AWSPREVIOUS); secretBinary is base64. Parameter types are String,
// StringList and SecureString. "credentials" are static keys accepted on
// Secrets Manager and SSM; "trust" limits which token subjects may assume a
// role (when present, unlisted roles cannot be assumed); "allow" limits what
// a principal may read (unlisted principals may read everything).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "piggy-awslocal:", err)
		os.Exit(1)
	}
}
