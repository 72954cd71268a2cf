# syntax=docker/dockerfile:1.7
# piggy-env: the launcher the webhook injects. The install init container runs
# this image with args ["install", "/piggy"] only, so the ENTRYPOINT must be
# the piggy-env binary: "piggy-env install /piggy" copies it (and the broker
# CA from PIGGY_CA_BUNDLE) into the shared volume.
#
#   docker build -f deploy/docker/piggy-env.Dockerfile -t ghcr.io/piggysec/piggy-env:dev .
ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS
ARG TARGETARCH
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-buildvcs=false
COPY go.work go.work.sum ./
COPY libs/go.mod libs/go.sum libs/
COPY services/admission-gateway/go.mod services/admission-gateway/go.sum services/admission-gateway/
COPY services/image-resolver/go.mod services/image-resolver/go.sum services/image-resolver/
COPY services/secret-broker/go.mod services/secret-broker/go.sum services/secret-broker/
COPY services/piggy-env/go.mod services/piggy-env/go.sum services/piggy-env/
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY services/piggy-env/ services/piggy-env/
# Static and small: it is copied into every pod that uses Piggy.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -ldflags="-s -w" -o /out/piggy-env ./services/piggy-env

FROM gcr.io/distroless/static-debian12:nonroot AS runtime
LABEL org.opencontainers.image.source="https://github.com/piggysec/piggy" \
      org.opencontainers.image.title="piggy-env" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/piggy-env /usr/local/bin/piggy-env
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/piggy-env"]
