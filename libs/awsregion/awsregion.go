// Package awsregion is the one rule for what an AWS region name looks
// like, for every service that takes one from its configuration, a pod's
// settings or a registry host name. It checks the shape only; which
// regions a service serves is its operator's choice.
package awsregion

import "regexp"

// Pattern is a region name as an unanchored regular expression, to embed
// in larger patterns such as an ECR registry host.
const Pattern = `[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}`

var anchored = regexp.MustCompile(`^` + Pattern + `$`)

// Valid reports whether name looks like an AWS region name: us-east-1,
// eu-central-2, us-gov-west-1, cn-north-1, us-isob-east-1.
func Valid(name string) bool { return anchored.MatchString(name) }
