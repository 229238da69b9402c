"""flock-cni-install: put flock-cni and its network config into a node's CNI directories.

Both files are written atomically and durably (temp file in the same directory, fsync,
rename, fsync of the directory: :mod:`flock.adapters.files`), so a runtime never execs a
half-written plugin or reads a half-written conflist, also after a crash.

flock-cni is a static executable (``cni-shim/flock-cni.c``, built by
``make -C cni-shim``): it needs nothing on the node. This command copies it from
``--source``, else ``$FLOCK_CNI_SOURCE``, else ``cni-shim/flock-cni`` of the source
checkout this package runs from (an editable install: the lab, the tests, a developer),
else ``/usr/local/lib/flock/flock-cni`` (where the image has it). A checkout never falls
back to another build: what it installs is what it built.

The plugin type is ``flock``, and a runtime execs ``<bin dir>/<type>``: so the bin dir
gets the executable ``flock-cni`` and the link ``flock -> flock-cni``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

from flock.adapters.files import fsync_directory, write_atomically
from flock.core.cnispec import SUPPORTED_VERSIONS
from flock.errors import FlockError

PLUGIN_NAME = "flock-cni"
PLUGIN_TYPE = "flock"
DEFAULT_SOCKET = "/run/flock/cni.sock"  # = flock-cni's own default (tests/unit/test_cni_shim.py)
SOURCE_ENV = "FLOCK_CNI_SOURCE"
IMAGE_SOURCE = pathlib.Path("/usr/local/lib/flock/flock-cni")
CHECKOUT_SOURCE = pathlib.Path(__file__).resolve().parents[3] / "cni-shim" / PLUGIN_NAME


class SourceMissing(FlockError):
    """No flock-cni executable to install."""


def conflist(socket_path: str, name: str = "flock") -> dict[str, object]:
    """The network config list: ``cniVersion`` for runtimes before spec 1.1 (libcni < 1.2),
    ``cniVersions`` for the others, which pick the highest one they know (1.1.0: GC, STATUS)."""
    return {
        "cniVersion": "1.0.0",
        "cniVersions": list(SUPPORTED_VERSIONS),
        "name": name,
        "plugins": [{"type": PLUGIN_TYPE, "socket": socket_path}],
    }


def default_source() -> pathlib.Path:
    """Where flock-cni is taken from when ``--source`` is not given (see the module doc)."""
    if os.environ.get(SOURCE_ENV):
        return pathlib.Path(os.environ[SOURCE_ENV])
    return CHECKOUT_SOURCE if CHECKOUT_SOURCE.parent.is_dir() else IMAGE_SOURCE


def link_atomically(path: pathlib.Path, target: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        os.replace(tmp, path)
        fsync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def read_executable(source: pathlib.Path) -> bytes:
    """The plugin's bytes, checked to be an ELF executable. Raises SourceMissing."""
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise SourceMissing(f"cannot read {PLUGIN_NAME} at {source}: {exc.strerror or exc} (build it with "
                            f"`make -C cni-shim`, or name it with --source or ${SOURCE_ENV})") from exc
    if not data.startswith(b"\x7fELF"):
        raise SourceMissing(f"{source} is not an executable (ELF) file: is it the built cni-shim/{PLUGIN_NAME}?")
    return data


def install(bin_dir: pathlib.Path, conf_dir: pathlib.Path, socket_path: str, source: pathlib.Path | None = None,
            conf_name: str = "10-flock.conflist") -> tuple[pathlib.Path, pathlib.Path]:
    """Write flock-cni (from ``source``, default :func:`default_source`), the link
    ``flock``, and the conflist. Returns (plugin, conflist). Raises SourceMissing."""
    plugin = read_executable(source or default_source())
    bin_dir.mkdir(parents=True, exist_ok=True)
    conf_dir.mkdir(parents=True, exist_ok=True)
    binary = bin_dir / PLUGIN_NAME
    write_atomically(binary, plugin, 0o755)
    link_atomically(bin_dir / PLUGIN_TYPE, PLUGIN_NAME)  # relative: valid on the host too
    conf = conf_dir / conf_name
    write_atomically(conf, (json.dumps(conflist(socket_path), indent=2) + "\n").encode(), 0o644)
    return binary, conf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flock-cni-install", description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", required=True, type=pathlib.Path, help="CNI bin dir, e.g. /opt/cni/bin")
    parser.add_argument("--conf-dir", required=True, type=pathlib.Path, help="CNI conf dir, e.g. /etc/cni/net.d")
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help="the agent's cniSocket")
    parser.add_argument("--source", type=pathlib.Path, default=None,
                        help=f"the flock-cni executable to install (default: ${SOURCE_ENV}, else cni-shim/flock-cni "
                             f"of the source checkout flock runs from, else {IMAGE_SOURCE})")
    parser.add_argument("--conf-name", default="10-flock.conflist")
    args = parser.parse_args(argv)
    try:
        binary, conf = install(args.bin_dir, args.conf_dir, args.socket, args.source, args.conf_name)
    except SourceMissing as exc:
        print(f"flock-cni-install: {exc}", file=sys.stderr)
        return 1
    print(f"installed {binary} and {conf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
