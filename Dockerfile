# flock's node image: flock-agent, flock-cni-install (which carries flock-cni), and BIRD 2.
# One image for all the DaemonSet's containers (see charts/flock).
#
#   docker build -t flock:0.1.0 .
#
# Debian bookworm, like the machines flock is developed and tested on: its bird2 is the
# BIRD 2.0.12 the tests run against.
FROM python:3.11-slim-bookworm

# bird2: bird and birdc (the agent runs `bird -p` and `birdc configure`; the bird
# container runs the daemon). iproute2: `ip route show proto 201` for a person on the node.
RUN apt-get update \
 && apt-get install -y --no-install-recommends bird2 iproute2 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src/flock
COPY . .
# The BIRD templates ship inside the package (flock/birdtemplates); fail the build if not.
RUN pip install --no-cache-dir . \
 && python -c 'import flock.adapters.bird as b; assert b.DEFAULT_TEMPLATE.is_file(), b.DEFAULT_TEMPLATE' \
 && for tool in flock-agent flock-cni-install bird birdc; do command -v "$tool" || exit 1; done \
 && cd / && rm -rf /src/flock
WORKDIR /

# Root. The chart gives the agent NET_ADMIN and SYS_ADMIN and the host's /proc/sys/net
# (runtimes mount a container's own /proc/sys read-only), BIRD NET_BIND_SERVICE only.
CMD ["flock-agent", "--config", "/etc/flock/agent.yaml"]
