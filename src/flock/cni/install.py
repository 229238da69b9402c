"""flock-cni-install: put flock-cni and its network config into a node's CNI directories.

Both files are written atomically and durably (temp file in the same directory, fsync,
rename, fsync of the directory: :mod:`flock.adapters.files`), so a runtime never execs a
half-written plugin or reads a half-written conflist, also after a crash. The
plugin runs with the node's own Python 3 (``--interpreter``); it needs nothing else.

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
from flock.cni import plugin

PLUGIN_NAME = "flock-cni"
PLUGIN_TYPE = "flock"


def conflist(socket_path: str, name: str = "flock") -> dict[str, object]:
    return {
        "cniVersion": plugin.SUPPORTED_VERSIONS[-1],  # what the plugin installed beside it speaks
        "name": name,
        "plugins": [{"type": PLUGIN_TYPE, "socket": socket_path}],
    }


def link_atomically(path: pathlib.Path, target: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        os.replace(tmp, path)
        fsync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def plugin_source(interpreter: str) -> bytes:
    source = pathlib.Path(plugin.__file__).read_text()
    body = source.split("\n", 1)[1] if source.startswith("#!") else source
    # -I: isolated (ignore PYTHON* variables and user site), -S: no site import (fast start).
    return f"#!{interpreter} -IS\n{body}".encode()


def install(bin_dir: pathlib.Path, conf_dir: pathlib.Path, socket_path: str, interpreter: str,
            conf_name: str = "10-flock.conflist") -> tuple[pathlib.Path, pathlib.Path]:
    bin_dir.mkdir(parents=True, exist_ok=True)
    conf_dir.mkdir(parents=True, exist_ok=True)
    binary = bin_dir / PLUGIN_NAME
    write_atomically(binary, plugin_source(interpreter), 0o755)
    link_atomically(bin_dir / PLUGIN_TYPE, PLUGIN_NAME)  # relative: valid on the host too
    conf = conf_dir / conf_name
    write_atomically(conf, (json.dumps(conflist(socket_path), indent=2) + "\n").encode(), 0o644)
    return binary, conf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flock-cni-install", description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", required=True, type=pathlib.Path, help="CNI bin dir, e.g. /opt/cni/bin")
    parser.add_argument("--conf-dir", required=True, type=pathlib.Path, help="CNI conf dir, e.g. /etc/cni/net.d")
    parser.add_argument("--socket", default=plugin.DEFAULT_SOCKET, help="the agent's cniSocket")
    parser.add_argument("--interpreter", default="/usr/bin/python3", help="the node's Python 3")
    parser.add_argument("--conf-name", default="10-flock.conflist")
    args = parser.parse_args(argv)
    binary, conf = install(args.bin_dir, args.conf_dir, args.socket, args.interpreter, args.conf_name)
    print(f"installed {binary} and {conf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
