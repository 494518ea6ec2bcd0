# mcp-tunnel: the proxy (default command) and /setup, in one small image, as the official mcp-proxy
# image is used (docs/deployment.md).
#
#   docker build -t mcp-tunnel:local .
#   docker run --rm --read-only --cap-drop ALL --security-opt no-new-privileges:true \
#       -v "$PWD/config/mcp-proxy.yaml:/etc/mcp-gateway/config.yaml:ro" -v "$PWD/data:/data:ro" \
#       mcp-tunnel:local
#
# Reproducible: the base image is pinned by digest (override with --build-arg PYTHON_IMAGE=...),
# every Python dependency is pinned with all its hashes (docker/requirements.*.txt, regenerated
# by docker/relock from requirements.lock) and installed with --require-hashes from wheels only.
# Only the proxy's dependencies (9 packages): not the demo extra, the MCP Python SDK and its ~24.
# Runs as uid/gid 65532, needs no capability and no writable path: works with --read-only,
# --cap-drop ALL, no-new-privileges and /data mounted read-only. No shell tools are added
# (no curl): the HEALTHCHECK is a Python script using urllib.

# python:3.11-slim (Debian), multi-arch index digest. See docs/deployment.md, "Base image digest".
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY docker/requirements.build.txt docker/requirements.image.txt /tmp/lock/
# Build tools (the setuptools backend, mypy whose mypyc compiles the request path, and a C
# compiler for it) live in this stage only and never ship.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/* \
 && python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes --no-deps --only-binary=:all: \
        -r /tmp/lock/requirements.build.txt \
 && python -m venv /opt/mcp-tunnel \
 && /opt/mcp-tunnel/bin/pip install --require-hashes --no-deps --only-binary=:all: \
        -r /tmp/lock/requirements.image.txt
COPY pyproject.toml setup.py README.md* /src/
COPY src /src/src
# The project itself: built offline with the pinned backend (its hot modules compiled to C
# extensions, which need only the C library at run time), installed without touching the
# index, then pip and setuptools leave the runtime venv. Bytecode is compiled now, because the
# root filesystem is read-only at run time.
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --no-index -w /tmp/wheels /src \
 && /opt/mcp-tunnel/bin/pip install --no-deps --no-index /tmp/wheels/*.whl \
 && /opt/mcp-tunnel/bin/pip uninstall -y -q pip setuptools \
 && /opt/mcp-tunnel/bin/python -m compileall -q -j 0 /opt/mcp-tunnel/lib
# The files the runtime image adds to /, with their modes.
COPY docker/entrypoint.sh docker/setup docker/healthcheck.py /tmp/docker/
RUN install -D -m 0755 /tmp/docker/entrypoint.sh /rootfs/usr/local/bin/mcp-tunnel-entrypoint \
 && install -D -m 0755 /tmp/docker/setup /rootfs/setup \
 && install -D -m 0644 /tmp/docker/healthcheck.py /rootfs/usr/local/lib/mcp-tunnel/healthcheck.py \
 && install -d -m 0755 /rootfs/etc/mcp-gateway \
 && install -d -m 0750 -o 65532 -g 65532 /rootfs/data

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="mcp-tunnel" \
      org.opencontainers.image.description="Customer-side stack for MCP tunnels: proxy (default) and /setup" \
      org.opencontainers.image.licenses="Apache-2.0"
# A named user for uid 65532 (the uid the official docs run as), so nothing trips over a missing
# passwd entry; no home directory, no login shell.
RUN groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin nonroot
COPY --from=build /opt/mcp-tunnel /opt/mcp-tunnel
COPY --from=build /rootfs/ /
ENV PATH=/opt/mcp-tunnel/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /
# Nothing listens on a published port by default: 8080 is the tunnel listener (cloudflared reaches
# it over localhost); the admin endpoint (admin_addr) should stay on loopback or the pod network.
EXPOSE 8080
# Ready = /readyz on admin_addr (config and certificate loaded, not draining); falls back to a TCP
# connect to listen_addr for a config without admin_addr. Kubernetes ignores this and uses the
# chart's probes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/opt/mcp-tunnel/bin/python", "-I", "/usr/local/lib/mcp-tunnel/healthcheck.py"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/mcp-tunnel-entrypoint"]
CMD ["-config", "/etc/mcp-gateway/config.yaml"]
