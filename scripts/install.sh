#!/usr/bin/env bash
# Install what flock needs on a fresh Debian machine (as root): BIRD 2, iproute2, a C
# compiler for the static flock-cni (musl-tools), the shim built (cni-shim/flock-cni), and
# a venv at .venv with flock and its test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (it installs Debian packages; flock's lab and tests need root)" >&2
  exit 1
fi

had_bird=0; command -v bird >/dev/null 2>&1 && had_bird=1
had_containerd=0; command -v containerd >/dev/null 2>&1 && had_containerd=1
need_apt=0
# nft brings libnftables, which flock-agent's connection pinning calls; conntrack shows the pins.
for bin in bird birdc ip ping sysctl python3 containerd ctr runc nft conntrack; do command -v "$bin" >/dev/null 2>&1 || need_apt=1; done
[ -x /usr/lib/cni/tuning ] || need_apt=1  # reference CNI plugins: real peers in the CNI tests
# containerd as a real runtime in the CNI tests; its sandbox image is a static busybox.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need_apt=1
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt=1
# flock-cni is a static C executable: musl-gcc (musl-tools) links it small; make drives it.
for bin in make musl-gcc; do command -v "$bin" >/dev/null 2>&1 || need_apt=1; done
if [ "$need_apt" = 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  packages="bird2 iproute2 iputils-ping procps nftables conntrack containernetworking-plugins busybox-static make gcc musl-tools"
  # Docker's containerd.io brings containerd and runc and conflicts with Debian's packages.
  dpkg-query -W -f='${Status}' containerd.io 2>/dev/null | grep -q 'ok installed' \
    || packages="$packages containerd runc"
  # Debian's own python3 needs python3-venv for `python3 -m venv`.
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || packages="$packages python3 python3-venv"
  apt-get install -y -qq --no-install-recommends $packages >/dev/null
  # Debian's package starts a system BIRD where it can. flock runs BIRDs of its own, so
  # stop the one this script just brought in (never one that was there before).
  if [ "$had_bird" = 0 ]; then systemctl disable --now bird >/dev/null 2>&1 || true; fi
  # Likewise containerd: the tests start their own, inside a node netns.
  if [ "$had_containerd" = 0 ]; then systemctl disable --now containerd >/dev/null 2>&1 || true; fi
fi

make -s -C cni-shim  # cni-shim/flock-cni: what flock-cni-install, the lab and the tests install

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test,lab]'
echo "flock installed in .venv"
