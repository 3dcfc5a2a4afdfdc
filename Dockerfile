# syntax=docker/dockerfile:1
# Multi-stage build: compile with the Rust toolchain (librdkafka is built from source and
# linked statically, with OpenSSL built from source for TLS and SASL/SCRAM), run on distroless
# as a non-root user. The runtime image holds the binary and glibc, nothing else.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Manifests first, so dependency builds are cached across source changes.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin ecom-pulse

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/ecom-pulse /usr/local/bin/ecom-pulse
USER 65532:65532
# Listen on all interfaces inside the container; the built-in default is loopback.
ENV ECOM_PULSE__HTTP__LISTEN=0.0.0.0:9898
EXPOSE 9898
ENTRYPOINT ["/usr/local/bin/ecom-pulse"]
CMD ["run"]
