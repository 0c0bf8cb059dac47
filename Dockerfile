# syntax=docker/dockerfile:1
# confab: multi-stage build. Dependencies are compiled in their own layer (cargo-chef), so a
# change to confab's own code rebuilds only confab. The runtime image has no shell: a static
# set of files, running as a non-root user.

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin confab \
 && install -D -m 0755 target/release/confab /out/confab

# distroless/cc: glibc and CA certificates, no shell, no package manager; uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/confab /usr/local/bin/confab
USER 65532:65532
EXPOSE 8080 9090
ENV CONFAB_LISTEN=0.0.0.0:8080 \
    CONFAB_METRICS_LISTEN=0.0.0.0:9090 \
    CONFAB_LOG_FORMAT=json \
    CONFAB_DATA_DIR=/data
ENTRYPOINT ["/usr/local/bin/confab"]
CMD ["serve"]
