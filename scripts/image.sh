#!/usr/bin/env bash
# Build flock's node image from the repository's Dockerfile with whatever engine works
# here: a docker daemon, podman, or buildah (installed from Debian's packages when none
# is there and we are root).
#
#   scripts/image.sh [--tag flock:0.1.0] [--engine docker|podman|buildah] [--output FILE]
#
# The Dockerfile starts FROM debian:bookworm-slim. Where that image cannot be pulled (no
# registry reachable), this script makes it first from Debian's own packages with a
# public recipe: `debootstrap --variant=minbase bookworm`, slimmed like Debian's official
# images (no docs, man pages or locales; apt lists removed), imported under that name.
# The same Dockerfile then builds unchanged, here and on a machine that can pull.
#
# buildah runs as root with STORAGE_DRIVER=vfs and BUILDAH_ISOLATION=chroot (no overlay
# mounts and no user namespaces needed) and keeps its images in $FLOCK_IMAGE_CACHE/containers,
# apart from any system storage:
#   buildah --root /var/cache/flock-image/containers --storage-driver vfs images
# --output FILE also writes the image as a docker archive, for `docker load -i FILE` or
# `kind load image-archive FILE`.
#
# Cache ($FLOCK_IMAGE_CACHE, default /var/cache/flock-image): the debootstrap tarball and
# buildah's storage (with --layers, so an unchanged apt layer is not built again). Both
# are made again when missing; `--refresh-base` remakes the tarball.
set -euo pipefail
cd "$(dirname "$0")/.."

tag=flock:$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
engine=
output=
refresh_base=0
base=debian:bookworm-slim
cache=${FLOCK_IMAGE_CACHE:-/var/cache/flock-image}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    --tag) tag=$2; shift 2 ;;
    --engine) engine=$2; shift 2 ;;
    --output) output=$2; shift 2 ;;
    --refresh-base) refresh_base=1; shift ;;
    -h|--help) usage ;;
    *) echo "image.sh: unknown argument $1" >&2; usage ;;
  esac
done

say() { echo "image.sh: $*" >&2; }
seconds() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(seconds)" 'BEGIN { printf "%.0f s", b - a }'; }

# Debian packages, installed only when missing (as root).
need_packages() {
  local missing=() bin
  for bin in "$@"; do command -v "${bin%%:*}" >/dev/null 2>&1 || missing+=("${bin#*:}"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "needs ${missing[*]} (Debian packages); install them or run as root on Debian"; exit 1
  fi
  say "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# -- The engine --------------------------------------------------------------------------

if [ -z "$engine" ]; then
  # A docker client without a daemon (common in CI images) does not count.
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then engine=docker
  elif command -v podman >/dev/null 2>&1; then engine=podman
  else engine=buildah
  fi
fi
case $engine in
  docker|podman) command -v "$engine" >/dev/null || { say "$engine not found"; exit 1; } ;;
  buildah) need_packages buildah:buildah ;;
  *) say "unknown engine $engine (docker, podman or buildah)"; exit 2 ;;
esac

engine_cmd=("$engine")
if [ "$engine" = buildah ]; then
  export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
  mkdir -p "$cache/containers"
  engine_cmd=(buildah --root "$cache/containers" --runroot "$cache/run" --storage-driver vfs)
fi
engine() { "${engine_cmd[@]}" "$@"; }

# -- The base: debian:bookworm-slim, pulled or made ---------------------------------------

have_base() {
  case $engine in
    docker) docker image inspect "$base" >/dev/null 2>&1 ;;
    *) engine inspect --type image "docker.io/library/$base" >/dev/null 2>&1 ;;
  esac
}

# A root filesystem like Debian's official bookworm-slim (made by debuerreotype): minbase,
# with dpkg told to leave out docs, man pages and locales, and apt's lists and caches
# emptied. The tarball is kept in the cache.
make_rootfs_tarball() {
  local tarball=$1 root
  need_packages debootstrap:debootstrap
  root=$(mktemp -d "$cache/rootfs.XXXXXX")
  say "debootstrap --variant=minbase bookworm (Debian's packages, about a minute)"
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log" >&2; rm -rf "$root"; say "debootstrap failed (log: $cache/debootstrap.log)"
         exit 1; }
  cat > "$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
# As in Debian's official slim images: no documentation, man pages or locales.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
  cat > "$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
EOF
  echo 'APT::Install-Recommends "false";' > "$root/etc/apt/apt.conf.d/docker-no-recommends"
  # Updates and security fixes, as the official image lists them.
  rm -f "$root/etc/apt/sources.list"
  cat > "$root/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root"/usr/share/{groff,info,linda,lintian,locale,man}/* \
         "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
         "$root"/var/log/* "$root"/dev/* "$root"/run/* "$root"/tmp/*
  : > "$root/etc/hostname"
  tar --numeric-owner --xattrs -C "$root" -cf "$tarball.tmp" .
  rm -rf "$root"
  mv "$tarball.tmp" "$tarball"
}

import_base() {
  local tarball=$cache/debian-bookworm-minbase.tar
  mkdir -p "$cache"
  if [ ! -s "$tarball" ] || [ "$refresh_base" = 1 ]; then
    local start; start=$(seconds)
    make_rootfs_tarball "$tarball"
    say "base rootfs made in $(elapsed "$start"): $tarball"
  fi
  local path=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  say "importing $tarball as $base"
  case $engine in
    docker|podman)
      "$engine" import --change "ENV $path" --change 'CMD ["bash"]' "$tarball" "$base" >/dev/null ;;
    buildah)
      local ctr mnt
      ctr=$(engine from scratch)
      mnt=$(engine mount "$ctr")
      tar --numeric-owner --xattrs -C "$mnt" -xf "$tarball"
      engine umount "$ctr" >/dev/null
      engine config --env "$path" --cmd bash --os linux --arch "$(dpkg --print-architecture)" "$ctr"
      engine commit --rm -q "$ctr" "docker.io/library/$base" >/dev/null ;;
  esac
}

pull_base() {
  case $engine in
    docker) timeout 120 docker pull -q "$base" ;;
    *) timeout 120 "${engine_cmd[@]}" pull -q "docker.io/library/$base" ;;
  esac >/dev/null 2>&1
}

if [ "$refresh_base" = 1 ]; then
  import_base
elif ! have_base; then
  if pull_base; then say "pulled $base"
  else say "cannot pull $base: making it from Debian's packages"; import_base
  fi
fi

# -- The image ----------------------------------------------------------------------------

build_args=(--network host -q)  # host network: apt and pip reach out
# Behind a TLS-intercepting proxy the build's pip must trust the proxy's CA, as this
# host's pip does: $FLOCK_BUILD_CA, else $PIP_CERT, else the `cert` of pip's config files,
# goes to the Dockerfile's pip step as the build secret pip-ca (mounted for that step
# only, stored in no layer).
pip_config_cert() {
  local file found cert=
  for file in /etc/xdg/pip/pip.conf /etc/pip.conf "$HOME/.pip/pip.conf" "$HOME/.config/pip/pip.conf" \
              "${PIP_CONFIG_FILE:-}"; do  # pip's order: a later file wins
    [ -n "$file" ] && [ -r "$file" ] || continue
    found=$(sed -n 's/^[[:space:]]*cert[[:space:]]*=[[:space:]]*//p' "$file" | tail -1)
    [ -z "$found" ] || cert=$found
  done
  echo "$cert"
}
build_ca=${FLOCK_BUILD_CA:-${PIP_CERT:-$(pip_config_cert)}}
[ -z "$build_ca" ] || build_args+=(--secret "id=pip-ca,src=$(readlink -f "$build_ca")")
[ "$engine" = buildah ] && build_args+=(--layers)  # unchanged steps come from the cache

start=$(seconds)
say "building $tag with $engine"
case $engine in
  docker|podman) "$engine" build "${build_args[@]}" -t "$tag" . >/dev/null ;;
  buildah)
    # Each stage is tagged too, so that the prune below keeps the layers an unchanged
    # stage is made of (with vfs each layer is a full copy: untagged leftovers of earlier
    # builds would fill the disk, and pruning every untagged image would drop the cache).
    for stage in cni-shim venv; do
      engine build "${build_args[@]}" --target "$stage" -t "localhost/flock-build:$stage" . >/dev/null
    done
    engine build "${build_args[@]}" -t "$tag" . >/dev/null
    engine rmi --prune >/dev/null 2>&1 || true ;;
esac
case $engine in
  docker) size=$(docker image inspect -f '{{.Size}}' "$tag" | awk '{ printf "%.0f MB", $1 / 1e6 }') ;;
  *) size=$(engine images --format '{{.Size}}' "$tag") ;;
esac
say "built $tag in $(elapsed "$start"), $size"

if [ -n "$output" ]; then
  rm -f "$output"
  case $engine in
    docker|podman) "$engine" save -o "$output" "$tag" ;;
    buildah) engine push -q "$tag" "docker-archive:$output:$tag" ;;
  esac
  say "wrote $output (docker load -i $output, or kind load image-archive $output)"
fi
