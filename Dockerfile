# syntax=docker/dockerfile:1
#
# agentry's container image.
#
#   docker build -t agentry:local .
#   docker run --rm agentry:local --help
#
# Two stages: `build` compiles the release binary on the official Rust image; the runtime stage is
# distroless (glibc, CA certificates, no shell, no package manager) and runs as the non-root user
# 65532. Base images are pinned by version; the Rust version is at least Cargo.toml's rust-version.
# Secrets never enter the image: no secret is a build argument, an ENV default or a file here; at
# run time they are mounted as files under /run/secrets (Compose/Swarm secrets, a Kubernetes
# Secret volume). tests/it/shipping.rs lints this file with hadolint and checks that what the
# runtime stage copies is what the build stage produces.

ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src

# 1. Dependencies in their own layer: a skeleton crate with the real manifests and an empty
#    lib/main. This layer is rebuilt only when Cargo.toml, Cargo.lock, the benches, the memory
#    test or the test kit change: Cargo refuses a manifest whose declared [[bench]] and [[test]]
#    targets are missing, and a workspace whose member (crates/agentry-testkit, dev-only: it is
#    never built here) is absent.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
COPY tests/memory.rs ./tests/memory.rs
COPY crates ./crates
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    mkdir -p src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin agentry \
    && rm -rf src

# 2. agentry itself. config/ is needed at compile time too (config/default.toml is embedded).
#    The touch makes cargo rebuild the crate even where the copied files are older than the
#    skeleton's build.
COPY src ./src
COPY config ./config
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin agentry \
    && mkdir -p out/definitions

# distroless/cc: glibc and libgcc (what a Rust binary links), CA certificates, tzdata, and the
# `nonroot` user (65532). debian12 matches the build stage's bookworm glibc.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime

LABEL org.opencontainers.image.title="agentry" \
      org.opencontainers.image.description="Research agents on supervised actors" \
      org.opencontainers.image.licenses="Apache-2.0"

WORKDIR /app
COPY --from=build /src/target/release/agentry /usr/local/bin/agentry
COPY --from=build /src/config /app/config
# An empty output directory owned by the runtime user, so a fresh named volume mounted here
# (Swarm) starts writable. Compose bind-mounts ./definitions over it instead.
COPY --from=build --chown=65532:65532 /src/out/definitions /app/definitions

USER 65532:65532
ENTRYPOINT ["/usr/local/bin/agentry"]
CMD ["run"]
