# syntax=docker/dockerfile:1.7
# secret-broker: HTTPS JSON gateway :8443, mTLS gRPC :9443, metrics/probes :9090.
#
# Build from the repository root (the Go workspace spans libs and the services):
#
#   docker build -f deploy/docker/secret-broker.Dockerfile -t ghcr.io/piggysec/secret-broker:dev .
#
# Targets: "runtime" (default, last stage): distroless static, non-root, the
# binary only. "compose": the same plus deploy/healthcheck for Docker
# HEALTHCHECKs in docker-compose.yaml (distroless has no shell or curl).
ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-buildvcs=false
# Every module of go.work must be present for the workspace to load; only the
# module files are copied first so dependency downloads stay cached.
COPY go.work go.work.sum ./
COPY libs/go.mod libs/go.sum libs/
COPY services/admission-gateway/go.mod services/admission-gateway/go.sum services/admission-gateway/
COPY services/image-resolver/go.mod services/image-resolver/go.sum services/image-resolver/
COPY services/secret-broker/go.mod services/secret-broker/go.sum services/secret-broker/
COPY services/piggy-env/go.mod services/piggy-env/go.sum services/piggy-env/
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY libs/ libs/
COPY services/secret-broker/ services/secret-broker/
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -ldflags="-s -w -X main.version=${VERSION}" -o /out/secret-broker ./services/secret-broker

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS healthcheck
ARG TARGETOS
ARG TARGETARCH
WORKDIR /src
COPY deploy/healthcheck/main.go deploy/healthcheck/main.go
RUN CGO_ENABLED=0 GOWORK=off GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -ldflags="-s -w" -o /out/healthcheck ./deploy/healthcheck/main.go

FROM gcr.io/distroless/static-debian12:nonroot AS compose
COPY --from=build /out/secret-broker /usr/local/bin/secret-broker
COPY --from=healthcheck /out/healthcheck /usr/local/bin/healthcheck
USER 65532:65532
EXPOSE 8443 9443 9090
ENTRYPOINT ["/usr/local/bin/secret-broker"]

FROM gcr.io/distroless/static-debian12:nonroot AS runtime
LABEL org.opencontainers.image.source="https://github.com/piggysec/piggy" \
      org.opencontainers.image.title="piggy secret-broker" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/secret-broker /usr/local/bin/secret-broker
USER 65532:65532
EXPOSE 8443 9443 9090
ENTRYPOINT ["/usr/local/bin/secret-broker"]
