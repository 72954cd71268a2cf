// Package glob matches names against IAM-style wildcard patterns: "*"
// matches any run of characters (including "/"), "?" exactly one. The
// secret-broker's policy and the AWS-compatible test server use it.
package glob

// Match reports whether name matches pattern. It is iterative with
// single-star backtracking: linear in practice and immune to pathological
// patterns. A star in the pattern stays a wildcard even where the name
// holds a literal '*'.
func Match(pattern, name string) bool {
	p, n := 0, 0
	star, mark := -1, 0
	for n < len(name) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, n
			p++
		case p < len(pattern) && (pattern[p] == '?' || pattern[p] == name[n]):
			p++
			n++
		case star >= 0:
			p = star + 1
			mark++
			n = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}
