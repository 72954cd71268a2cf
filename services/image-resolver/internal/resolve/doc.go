// Package resolve reads the ENTRYPOINT and CMD of container images from
// OCI registries with go-containerregistry, for one platform, with the
// credentials a pod is entitled to (package keychain), and caches them.
//
// # Caches and why they are safe to share
//
// Two caches sit in front of the registries:
//
//   - tags: (reference, effective platform, insecure flag, credential
//     identity) → manifest digest, for --tag-ttl (failures for
//     --negative-ttl). The credential identity is an HMAC of the exact
//     credentials that would be tried (see keychain.Candidates.Identity),
//     so an entry is reused only by a lookup that would present the same
//     credentials to the registry: a pod without access never sees what a
//     pod with access resolved, and anonymous lookups of public images are
//     shared by every namespace. Failures are keyed the same way.
//   - configs: manifest digest → ENTRYPOINT, CMD and platform, a bounded LRU
//     without expiry (content addressed). It is consulted only after the
//     caller's own credentials have read the manifest (or the index naming
//     it) or a tags entry made with those credentials exists, so the cache
//     never answers a digest the caller has not proven it can read.
//
// Identical concurrent cold lookups (same tags key) are coalesced with
// singleflight: one registry conversation, every caller gets its result.
// The shared lookup runs on its own context bounded by the registry
// timeout, so one caller's cancellation does not fail the others; each
// caller still stops waiting at its own deadline.
//
// # Platforms
//
// A request's platform fields fall back to the configured default. For an
// index the matching manifest is chosen, or the lookup fails with
// ErrNoMatchingPlatform listing the index's platforms. For a single
// manifest, the config's os/architecture are checked only when the request
// named a platform explicitly: with the default platform any single-
// platform image is accepted, because the node that pulls it can only run
// it if it matches, and rejecting it would break arm64-only clusters that
// did not change the default.
//
// # TLS
//
// Registry TLS is verified against the system roots plus --registry-ca-file.
// A request may skip verification (and use plain HTTP) only for a registry
// the operator listed in --insecure-registries; anywhere else plain HTTP is
// refused, including go-containerregistry's own fallback for loopback and
// private-address registries.
//
// # Limits
//
// Pod creators choose the registry, so what a lookup may reach and read is
// bounded: connections to internal addresses are refused after DNS
// resolution and on every redirect unless the operator allows them
// ([Destinations]), manifests and configs over the size limits are refused
// before or while they are read, and at most MaxColdLookups registry
// conversations run at once. Metric labels take a bounded set of hosts.
package resolve
