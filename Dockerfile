# ethgate container image.
#
#   docker build -t ethgate .
#   docker run --rm -p 8545:8545 -p 127.0.0.1:9545:9545 \
#       -v "$PWD/ethgate.toml:/etc/ethgate/ethgate.toml:ro" ethgate
#   docker run --rm -v "$PWD/ethgate.toml:/etc/ethgate/ethgate.toml:ro" ethgate check --probe
#
# The config is not baked in: mount it at /etc/ethgate/ethgate.toml (ETHGATE_CONFIG below), or
# pass `run --config FILE`. Inside a container, listen on 0.0.0.0 (`server.listen`, and
# `admin.listen` if the admin port is to be published) and set `access.allow` to the clients'
# addresses as the container sees them (e.g. the Docker network's subnet): the default allows
# loopback only, so every client from outside the container would be refused.

# Base images are pinned by version (bump them deliberately; pin by digest too where your
# registry policy asks for it). The image is linted with hadolint in the test suite
# (tests/deploy_files.rs); it was not built on the development machine, which reaches no
# container registry.

# ---- build ------------------------------------------------------------------------------------
FROM rust:1.95.0-bookworm AS builder
WORKDIR /build

# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml or Cargo.lock
# change. The stubs stand in for every target that Cargo.toml declares ([lib], [[bin]] ethgate,
# [[bench]] load, ws and hostile), since cargo refuses a manifest whose declared targets have
# no source file. tests/deploy_files.rs runs these commands against Cargo.toml's targets, so a
# target added there without a stub here fails the test suite, not the image build.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && for bench in load ws hostile; do echo 'fn main() {}' > "benches/$bench.rs"; done \
    && cargo build --release --locked \
    && rm -rf src benches

# The crate itself. COPY keeps the files' own (older) modification times, so the stubs'
# build could look up to date: touch the crate roots so cargo rebuilds the crate.
COPY . .
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin ethgate \
    && ./target/release/ethgate --version

# ---- runtime ----------------------------------------------------------------------------------
FROM debian:12.12-slim

# CA bundle for https:// and wss:// upstreams, from the builder (which has it): no apt-get run
# in this stage, so nothing unpinned is installed.
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt

RUN groupadd --system --gid 10001 ethgate \
    && useradd --system --uid 10001 --gid ethgate --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin ethgate \
    && mkdir -p /etc/ethgate

COPY --from=builder /build/target/release/ethgate /usr/local/bin/ethgate

ENV ETHGATE_CONFIG=/etc/ethgate/ethgate.toml
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

# 8545: JSON-RPC (server.listen); 9545: /healthz /readyz /status /metrics (admin.listen).
EXPOSE 8545 9545

# GET /healthz on the admin port (admin.listen, 9545) from inside the container, with bash's
# /dev/tcp since the slim image has no curl or wget. Liveness only: /readyz (upstreams in
# rotation, 503 while draining) is for load balancers and Kubernetes readiness, and an
# upstream outage must not mark the container unhealthy.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9545 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q '^HTTP/1.[01] 200' <&3"]

# Exec form: ethgate is PID 1 and receives SIGTERM itself (it drains, then exits 0).
ENTRYPOINT ["ethgate"]
CMD ["run"]
