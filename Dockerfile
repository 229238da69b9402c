# flock's node image: flock-agent, flock-cni-install with the flock-cni shim it copies to
# the host, BIRD 2, and the datapath tools. One image for all the DaemonSet's containers
# (see charts/flock).
#
#   scripts/image.sh              # docker, podman or buildah, whichever works here
#   docker build -t flock:0.1.0 . # the same, by hand (BuildKit: docker 23 and later)
#
# Debian bookworm throughout, like the machines flock is developed and tested on: Debian's
# python3 (3.11) and bird2 (the BIRD 2.0.12 the tests run against). Where no registry is
# reachable, scripts/image.sh makes debian:bookworm-slim from Debian's packages first
# (debootstrap), so this file builds unchanged either way.

# -- flock-cni: a static executable, run by the container runtime on the host ------------
FROM debian:bookworm-slim AS cni-shim
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc make musl-tools libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY cni-shim/ cni-shim/
RUN make -C cni-shim

# -- flock in a venv (the BIRD templates ship inside the package) ------------------------
FROM debian:bookworm-slim AS venv
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src/flock
COPY pyproject.toml README.md ./
COPY bird/ bird/
COPY src/ src/
# pip and setuptools are not needed to run flock: they stay behind. Behind a
# TLS-intercepting proxy pip must trust the proxy's CA: scripts/image.sh passes the
# host's bundle as the build secret pip-ca (only to this step, stored in no layer);
# without it pip trusts Debian's ca-certificates.
RUN --mount=type=secret,id=pip-ca,target=/run/secrets/pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && python3 -m venv /opt/flock \
 && /opt/flock/bin/pip install --no-cache-dir --disable-pip-version-check -q . \
 && /opt/flock/bin/pip uninstall -y -q pip setuptools

# -- the image ------------------------------------------------------------------------------
FROM debian:bookworm-slim
# python3: the venv's interpreter. bird2: bird and birdc (the agent runs `bird -p` and
# `birdc configure`; the bird container runs the daemon). iproute2: `ip route show proto
# 201` for a person on the node. nftables and conntrack: the datapath's connection pinning
# (conntrack marks) and a person inspecting it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 bird2 iproute2 nftables conntrack \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/flock/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Root. The chart gives the agent NET_ADMIN and SYS_ADMIN and the host's /proc/sys/net
# (runtimes mount a container's own /proc/sys read-only), BIRD NET_BIND_SERVICE only.
CMD ["flock-agent", "--config", "/etc/flock/agent.yaml"]
# flock-cni-install copies the shim from here to the host's CNI bin dir.
COPY --from=cni-shim /src/cni-shim/flock-cni /usr/local/lib/flock/flock-cni
COPY --from=venv /opt/flock /opt/flock
# Fail the build, not the first pod, if a part is missing.
RUN python3 -c 'import flock.adapters.bird as b; assert b.DEFAULT_TEMPLATE.is_file(), b.DEFAULT_TEMPLATE' \
 && for tool in flock-agent flock-cni-install bird birdc ip nft conntrack; do \
      command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }; done \
 && test -x /usr/local/lib/flock/flock-cni

