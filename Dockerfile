# syntax=docker/dockerfile:1
# mqtt2es: the bridge, `mqtt2es setup` and `mqtt2es simulate` in one small image.
#
#   docker build -t mqtt2es .                                        # this machine's architecture
#   docker buildx build --platform linux/amd64,linux/arm64 -t mqtt2es .   # both (needs buildx)
#
# The builder runs on the build machine's own architecture ($BUILDPLATFORM) and cross-compiles
# to $TARGETARCH with Debian's cross gcc (ring, the TLS crypto, has C and assembly parts), so an
# arm64 image does not build Rust under emulation. The runtime stage is the target's Debian.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM --platform=$BUILDPLATFORM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
ARG TARGETARCH
ARG BUILDARCH
WORKDIR /src
# The Rust target and, when it is not the build machine's, a cross C toolchain for it.
# DL3008: the Debian release is pinned (DEBIAN_RELEASE); pinning package versions too would break
# the build at every security update of that release.
# hadolint ignore=DL3008
RUN set -eu; \
    case "$TARGETARCH" in \
        amd64) target=x86_64-unknown-linux-gnu; gnu=x86-64-linux-gnu ;; \
        arm64) target=aarch64-unknown-linux-gnu; gnu=aarch64-linux-gnu ;; \
        *) echo "unsupported TARGETARCH '$TARGETARCH' (amd64 or arm64)" >&2; exit 1 ;; \
    esac; \
    echo "$target" > /rust-target; \
    if [ "$TARGETARCH" != "$BUILDARCH" ]; then \
        apt-get update; \
        apt-get install -y --no-install-recommends "gcc-$gnu" "libc6-dev-$TARGETARCH-cross"; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    rustup target add "$target"
# Debian's gcc answers to its triplet name natively too, so these hold for native builds as well.
ENV CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=x86_64-linux-gnu-gcc \
    CC_x86_64_unknown_linux_gnu=x86_64-linux-gnu-gcc \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc

# Dependencies first, against stand-in sources: this layer is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every edit of our own code. (bench/publish.rs: Cargo.toml names it.)
COPY Cargo.toml Cargo.lock ./
RUN set -eu; \
    mkdir -p src bench; \
    echo 'fn main() {}' > src/main.rs; \
    touch src/lib.rs; \
    echo 'fn main() {}' > bench/publish.rs; \
    cargo build --release --locked --target "$(cat /rust-target)" --bin mqtt2es; \
    rm -rf src bench

COPY . .
# touch: the stand-ins above are newer than the real files' copied mtimes, and cargo would
# otherwise keep the stand-in build. `mkdir -p dashboards`: a tree without dashboards still builds.
RUN set -eu; \
    touch src/main.rs src/lib.rs; \
    cargo build --release --locked --target "$(cat /rust-target)" --bin mqtt2es; \
    cp "target/$(cat /rust-target)/release/mqtt2es" /mqtt2es; \
    mkdir -p dashboards

FROM debian:${DEBIAN_RELEASE}-slim
# ca-certificates: Elasticsearch, Kibana and brokers over TLS. curl: the health checks
# (docker-compose.yml asks /readyz on the metrics port). DL3008: see the builder stage.
# hadolint ignore=DL3008
RUN set -eu; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates curl; \
    rm -rf /var/lib/apt/lists/*; \
    useradd --system --uid 10001 --user-group --home-dir /var/lib/mqtt2es --shell /usr/sbin/nologin mqtt2es; \
    mkdir -p /var/lib/mqtt2es; \
    chown mqtt2es:mqtt2es /var/lib/mqtt2es
COPY --from=builder /mqtt2es /usr/local/bin/mqtt2es
COPY --from=builder /src/pipelines /etc/mqtt2es/pipelines
COPY --from=builder /src/dashboards /etc/mqtt2es/dashboards
COPY docker/mqtt2es.yaml /etc/mqtt2es/mqtt2es.yaml
ENV MQTT2ES_CONFIG=/etc/mqtt2es/mqtt2es.yaml
# Not root; writes only its state (broker sessions, retained messages, the dead-letter file).
USER 10001:10001
WORKDIR /var/lib/mqtt2es
VOLUME ["/var/lib/mqtt2es"]
# MQTT (embedded broker), and /metrics, /healthz, /readyz.
EXPOSE 1883 9464
ENTRYPOINT ["mqtt2es"]
CMD ["run"]
