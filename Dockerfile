# syntax=docker/dockerfile:1
#
# The hsmgate image, used by the Helm chart (helm/hsmgate, image.repository): the
# gateway (/usr/local/bin/hsmgate, the entrypoint) and the REST access path
# (/usr/local/bin/hsmgate-rest, docs/REST.md; the chart's rest.* values).
#
#   docker build -t hsmgate:0.1.0 .
#   docker run --rm -v /path/to/etc-hsmgate:/etc/hsmgate:ro -p 2300:2300 -p 9300:9300 hsmgate:0.1.0
#   docker run --rm --entrypoint /usr/local/bin/hsmgate-rest \
#       -v /path/to/etc-hsmgate-rest:/etc/hsmgate-rest:ro -p 8443:8443 -p 9443:9443 \
#       hsmgate:0.1.0 --config /etc/hsmgate-rest/rest.toml
#
# By default the container runs `hsmgate run --config /etc/hsmgate/gateway.toml` as
# the unprivileged user 65532, with nothing writable needed; mount gateway.toml and
# the key file it names (key_file) at /etc/hsmgate. Set `[admin] address =
# "0.0.0.0:9300"` for probes and Prometheus to reach the admin endpoints from outside
# the container. hsmgate-rest likewise needs only its rest.toml, the TLS files, the
# client configs and the key files they name, read-only; its `[admin] address` (for
# example "0.0.0.0:9443") and listener address must not be loopback either.

# ---- build --------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# clang builds the kernel forwarding BPF program (gateway/bpf, `forwarding.mode =
# "kernel"`); HSMGATE_REQUIRE_BPF makes its absence a build error.
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends clang \
 && rm -rf /var/lib/apt/lists/*
ENV HSMGATE_REQUIRE_BPF=1
# The caches make rebuilds fast; the binaries are copied out of the cached target dir.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p hsmgate -p hsmgate-rest \
 && install -D -m 0755 target/release/hsmgate /out/hsmgate \
 && install -D -m 0755 target/release/hsmgate-rest /out/hsmgate-rest

# ---- runtime ------------------------------------------------------------------
# glibc and libgcc only, no shell, no package manager; the "nonroot" variant runs as
# 65532:65532. Same Debian release (12, bookworm) as the build stage, so the same glibc.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="hsmgate" \
      org.opencontainers.image.description="hsmgate: the access gateway of a cloud HSM service, and its REST access path (hsmgate-rest)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/hsmgate /usr/local/bin/hsmgate
COPY --from=build /out/hsmgate-rest /usr/local/bin/hsmgate-rest
# Numeric, so that Kubernetes can check runAsNonRoot against the image.
USER 65532:65532
# 2300: clients (the listener in gateway.toml), over TCP and, with a QUIC
# listener, over UDP; 9300: admin endpoints (/metrics, /healthz, /readyz,
# /config). hsmgate-rest: 8443, HTTPS (its listener in rest.toml); 9443, its admin
# endpoints (/metrics, /healthz, /readyz).
EXPOSE 2300/tcp 2300/udp 9300/tcp 8443/tcp 9443/tcp
ENTRYPOINT ["/usr/local/bin/hsmgate"]
CMD ["run", "--config", "/etc/hsmgate/gateway.toml"]
