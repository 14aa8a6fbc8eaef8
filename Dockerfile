# syntax=docker/dockerfile:1
#
# The hsmgate gateway image, used by the Helm chart (helm/hsmgate, image.repository).
#
#   docker build -t hsmgate:0.1.0 .
#   docker run --rm -v /path/to/etc-hsmgate:/etc/hsmgate:ro -p 2300:2300 -p 9300:9300 hsmgate:0.1.0
#
# The container runs `hsmgate run --config /etc/hsmgate/gateway.toml` as the
# unprivileged user 65532, with nothing writable needed; mount gateway.toml and the
# key file it names (key_file) at /etc/hsmgate. Set `[admin] address = "0.0.0.0:9300"`
# for probes and Prometheus to reach the admin endpoints from outside the container.

# ---- build --------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The caches make rebuilds fast; the binary is copied out of the cached target dir.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p hsmgate \
 && install -D -m 0755 target/release/hsmgate /out/hsmgate

# ---- runtime ------------------------------------------------------------------
# glibc and libgcc only, no shell, no package manager; the "nonroot" variant runs as
# 65532:65532. Same Debian release (12, bookworm) as the build stage, so the same glibc.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="hsmgate" \
      org.opencontainers.image.description="hsmgate: the access gateway of a cloud HSM service" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/hsmgate /usr/local/bin/hsmgate
# Numeric, so that Kubernetes can check runAsNonRoot against the image.
USER 65532:65532
# 2300: clients (the listener in gateway.toml), over TCP and, with a QUIC
# listener, over UDP; 9300: admin endpoints (/metrics, /healthz, /readyz,
# /config).
EXPOSE 2300/tcp 2300/udp 9300/tcp
ENTRYPOINT ["/usr/local/bin/hsmgate"]
CMD ["run", "--config", "/etc/hsmgate/gateway.toml"]
