# stackdemo: a static binary on an empty image.
#
#   docker build -t stackdemo .
#   docker build --build-arg VERSION=v2 -t stackdemo:v2 .
#
# Base images are build arguments so that a machine without registry access can pass
# images it built itself (scripts/base-images.sh does that for the tests). A build that
# must trust an intercepting TLS proxy to download crates can pass its CA bundle as the
# secret `cacert` (docker build --secret id=cacert,src=/etc/ssl/certs/ca-certificates.crt);
# it is used only while downloading and never stored in an image layer.

ARG RUST_IMAGE=rust:1-bookworm

FROM ${RUST_IMAGE} AS build
ARG TARGET=x86_64-unknown-linux-musl
# The official image has rustup and apt; a prepared builder already has all parts.
# musl-gcc and make build jemalloc, the allocator, for the static binary.
RUN if command -v rustup >/dev/null; then rustup target add "$TARGET"; fi \
 && if ! command -v musl-gcc >/dev/null || ! command -v make >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends musl-tools make \
      && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN --mount=type=secret,id=cacert \
    if [ -f /run/secrets/cacert ]; then export CARGO_HTTP_CAINFO=/run/secrets/cacert; fi \
 && mkdir -p src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && cargo build --profile dist --locked --target "$TARGET" \
 && rm -rf src "target/$TARGET/dist/.fingerprint/stackdemo-"* \
           "target/$TARGET/dist/deps/stackdemo-"* "target/$TARGET/dist/deps/libstackdemo-"*

COPY src ./src
# The dist profile: fat LTO and one codegen unit (Cargo.toml).
RUN cargo build --profile dist --locked --offline --target "$TARGET" \
 && install -D -m 0755 "target/$TARGET/dist/stackdemo" /out/stackdemo \
 && mkdir -p /out/data

FROM scratch
ARG VERSION=
ARG REVISION=unknown
LABEL org.opencontainers.image.title="stackdemo" \
      org.opencontainers.image.description="Visit counter of the Docker Swarm tutorial, in Rust" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /out/stackdemo /stackdemo
COPY --from=build --chown=10001:10001 /out/data /data
# The tutorial's stack file has no environment block: these defaults make it work as is.
ENV REDIS_URL=redis://redis:6379/0 \
    STACKDEMO_DATA_DIR=/data \
    STACKDEMO_LOG_FORMAT=json \
    STACKDEMO_VERSION=${VERSION}
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 CMD ["/stackdemo", "healthcheck"]
ENTRYPOINT ["/stackdemo"]
CMD ["serve"]
