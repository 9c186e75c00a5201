# syntax=docker/dockerfile:1
#
# A small image of ektool: one static x86_64-unknown-linux-musl binary on
# distroless "static" (CA certificates, tzdata, a `nonroot` user; no shell,
# no libc). TLS to AWS and to webhooks is rustls; libssh2's crypto is
# OpenSSL built from source and linked in (`--features vendored-openssl`);
# libgit2 and zlib are built from their bundled sources.
#
#   docker build -t ektool .
#   docker run --rm ektool --version
#
# See docs/scheduling.md ("A container image").

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
# The registry and target directory are build caches (BuildKit): a rebuild
# after a source change recompiles only the workspace's crates.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl \
        -p ektool --features vendored-openssl \
 && cp target/x86_64-unknown-linux-musl/release/ektool /ektool \
 && strip /ektool

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /ektool /ektool
USER nonroot:nonroot
ENTRYPOINT ["/ektool"]
