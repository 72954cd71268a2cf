// Package podidentity is the contract between the admission-gateway, which
// writes a pod's per-container identities, and the secret-broker, which
// checks them: the "piggysec.com/piggy-uid" annotation and the command
// signature.
//
// The annotation is a JSON object keyed by container name; each value holds
// the container's UID (also given to the container as PIGGY_UID) and the
// signature of the command line its launcher runs:
//
//	{"app":{"uid":"3f0c…","signature":"9a1b…"}}
package podidentity

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
)

// AnnotationKey is the pod annotation holding the identities.
const AnnotationKey = "piggysec.com/piggy-uid"

// Entry is the identity of one container.
type Entry struct {
	// UID is a random 128-bit hex string, stable across webhook
	// re-invocations of the same pod.
	UID string `json:"uid"`
	// Signature is Signature(command line) of the container.
	Signature string `json:"signature"`
}

// Identities maps container names to their identity.
type Identities map[string]Entry

// Parse decodes an annotation value. An empty value is an empty set.
func Parse(value string) (Identities, error) {
	ids := Identities{}
	if strings.TrimSpace(value) == "" {
		return ids, nil
	}
	if err := json.Unmarshal([]byte(value), &ids); err != nil {
		return nil, fmt.Errorf("annotation %s is not a JSON object of container identities: %w", AnnotationKey, err)
	}
	return ids, nil
}

// Format encodes identities deterministically (keys sorted).
func (ids Identities) Format() string {
	b, _ := json.Marshal(map[string]Entry(ids)) // a map of string structs always marshals
	return string(b)
}

// Signature is the lowercase hex SHA-256 of the command line joined with
// single spaces and trimmed, as in the original Piggy.
func Signature(commandLine []string) string {
	sum := sha256.Sum256([]byte(strings.TrimSpace(strings.Join(commandLine, " "))))
	return hex.EncodeToString(sum[:])
}

// NewUID returns a random 128-bit hex UID.
func NewUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}

// Match finds the entry whose UID equals uid and reports whether its
// signature equals signature. Both comparisons run in constant time over
// every entry, and empty values never match.
func (ids Identities) Match(uid, signature string) (name string, uidOK, signatureOK bool) {
	if uid == "" {
		return "", false, false
	}
	for n, e := range ids {
		if e.UID == "" {
			continue
		}
		if subtle.ConstantTimeCompare([]byte(e.UID), []byte(uid)) == 1 {
			name, uidOK = n, true
			signatureOK = signature != "" && e.Signature != "" &&
				subtle.ConstantTimeCompare([]byte(e.Signature), []byte(signature)) == 1
		}
	}
	return name, uidOK, signatureOK
}
