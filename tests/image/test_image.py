"""flock's image, built here by scripts/image.sh, runs the chart's steps as a node would.

The image is built with buildah from the checkout (vfs storage, chroot isolation; the
base is made from Debian's packages where no registry answers, and cached in
/var/cache/flock-image). The chart's own commands, rendered by Helm's engine, then run
inside it: the render-config init step (which ends in ``flock-agent --check-config``),
the install-cni step (whose shim then answers VERSION on the host, as a runtime runs it),
``bird -p`` on a bird.conf the image's agent renders and on the kind guide's ToR config.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence

import pytest

from tests.chart.rendering import DUALSTACK, REPO, Rendered, load_values, render

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # a cold build takes ~3 min

# scripts/image.sh's defaults: its cache directory holds buildah's storage.
CACHE = pathlib.Path(os.environ.get("FLOCK_IMAGE_CACHE", "/var/cache/flock-image"))
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
TAG = f"localhost/flock:{VERSION}"
CONTAINER_PREFIX = "flock-test-"
KIND = REPO / "deploy" / "kind"
TOR_V4, TOR_V6 = "192.0.2.1", "2001:db8:ffff::1"  # stand-ins for the kind ToR's addresses
HOST_IPS = "192.0.2.2,2001:db8:ffff::2"


@dataclasses.dataclass
class Image:
    """A working container of the built image, for ``buildah run``."""

    buildah: list[str]
    container: str

    def run(self, *argv: str, env: Mapping[str, str] | None = None,
            volumes: Sequence[tuple[pathlib.Path, str]] = (), timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the image as root; ``volumes``: (host path, path in the image)."""
        options = [f"--env={key}={value}" for key, value in (env or {}).items()]
        options += [f"--volume={host}:{inside}" for host, inside in volumes]
        return subprocess.run([*self.buildah, "run", "--isolation=chroot", *options, self.container, "--", *argv],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def ok(self, *argv: str, env: Mapping[str, str] | None = None,
           volumes: Sequence[tuple[pathlib.Path, str]] = ()) -> str:
        """:meth:`run` that must succeed; returns its stdout."""
        done = self.run(*argv, env=env, volumes=volumes)
        assert done.returncode == 0, f"{argv} in the image: {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout


def _remove_stale_containers(buildah: list[str]) -> None:
    # A crashed session leaves its working container (a full copy of the image with vfs).
    names = subprocess.run([*buildah, "containers", "--format", "{{.ContainerName}}"],
                           capture_output=True, text=True, timeout=60, check=False).stdout.split()
    for name in names:
        match = re.fullmatch(rf"{CONTAINER_PREFIX}(\d+)", name)
        if match and not pathlib.Path(f"/proc/{match[1]}").exists():
            subprocess.run([*buildah, "rm", name], capture_output=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    start = time.monotonic()
    built = subprocess.run(["bash", str(REPO / "scripts" / "image.sh"), "--engine", "buildah", "--tag", TAG],
                           capture_output=True, text=True, timeout=1500, check=False)
    seconds = time.monotonic() - start
    assert built.returncode == 0, f"scripts/image.sh failed ({built.returncode}):\n{built.stderr[-6000:]}"
    # scripts/image.sh's "built <tag> in N s, SIZE"; pytest shows it with -rP or on failure.
    print(f"{built.stderr}scripts/image.sh took {seconds:.0f} s")
    buildah = ["buildah", "--root", str(CACHE / "containers"), "--runroot", str(CACHE / "run"),
               "--storage-driver", "vfs"]
    _remove_stale_containers(buildah)
    name = f"{CONTAINER_PREFIX}{os.getpid()}"
    subprocess.run([*buildah, "rm", name], capture_output=True, timeout=60, check=False)
    subprocess.run([*buildah, "from", "-q", "--name", name, TAG], capture_output=True, text=True,
                   timeout=300, check=True)
    try:
        yield Image(buildah, name)
    finally:
        subprocess.run([*buildah, "rm", name], capture_output=True, timeout=120, check=False)


def kind_values() -> dict[str, object]:
    """deploy/kind/values.yaml with the ToR peers the guide adds with --set."""
    values = load_values(KIND / "values.yaml")
    bird = dict(values.get("bird") or {})
    bird["peers"] = [{"address": TOR_V4, "asn": 65000}, {"address": TOR_V6, "asn": 65000}]
    return {**values, "bird": bird}


SCENARIOS = {"dualstack": lambda: load_values(DUALSTACK), "kind": kind_values}


def render_config_in_image(image: Image, rendered: Rendered, workdir: pathlib.Path) -> pathlib.Path:
    """The DaemonSet's render-config init container, as the kubelet runs it, in the image.

    Returns the host path of the agent.yaml it wrote.
    """
    container = rendered.container("render-config")
    command = container["command"]
    configmap_file, target = pathlib.PurePosixPath(command[4]), pathlib.PurePosixPath(command[5])
    configmap, config = workdir / "configmap", workdir / "config"
    configmap.mkdir()
    config.mkdir()
    (configmap / configmap_file.name).write_text(rendered.agent_yaml)
    done = image.run(*command, env={"NODE_NAME": "kind-worker", "HOST_IPS": HOST_IPS, "HOST_IP": "192.0.2.2"},
                     volumes=[(configmap, str(configmap_file.parent)), (config, str(target.parent))])
    assert done.returncode == 0, f"render-config in the image: {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "config ok (node kind-worker)" in done.stdout, done.stdout  # flock-agent --check-config
    return config / target.name


def test_flock_agent_in_the_image_is_this_checkouts_version(image: Image) -> None:
    assert image.ok("flock-agent", "--version").strip() == f"flock-agent {VERSION}"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_charts_render_config_step_writes_a_config_the_images_agent_accepts(
        image: Image, tmp_path: pathlib.Path, scenario: str) -> None:
    written = render_config_in_image(image, render(SCENARIOS[scenario]()), tmp_path)
    assert re.search(r"^\s*routerId:\s*192\.0\.2\.2\s*$", written.read_text(), re.MULTILINE), written.read_text()


def test_the_charts_install_cni_step_puts_a_shim_on_the_host_that_answers_version(
        image: Image, tmp_path: pathlib.Path) -> None:
    rendered = render(kind_values())
    container = rendered.container("install-cni")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    bin_dir.mkdir()
    conf_dir.mkdir()
    image.ok(*container["command"], volumes=[(bin_dir, mounts["cni-bin"]), (conf_dir, mounts["cni-conf"])])

    assert os.readlink(bin_dir / "flock") == "flock-cni"
    conflist = json.loads((conf_dir / "10-flock.conflist").read_text())
    assert [p["type"] for p in conflist["plugins"]] == ["flock"]
    assert conflist["plugins"][0]["socket"] == "/run/flock/cni.sock"
    # The runtime runs the plugin on the host, with the CNI environment and nothing else.
    done = subprocess.run([str(bin_dir / "flock")], env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"},
                          input=json.dumps({"cniVersion": "1.0.0"}), capture_output=True, text=True,
                          timeout=10, check=False)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert "1.0.0" in answer["supportedVersions"], answer


RENDER_BIRD_CONF = """
import ipaddress, pathlib, sys
from flock.adapters.bird import render_bird_conf
from flock.adapters.configfile import load_config
from flock.core.birdview import bird_view
config = load_config(sys.argv[1])
pods = [ipaddress.ip_network(n) for n in ("10.244.1.0/24", "fd00:10:244:1::/64")]
pathlib.Path(sys.argv[2]).write_text(render_bird_conf(bird_view(config=config, pod_cidrs=pods)))
"""


def test_the_images_bird_accepts_the_bird_conf_its_agent_renders(image: Image, tmp_path: pathlib.Path) -> None:
    config = render_config_in_image(image, render(kind_values()), tmp_path)
    out = tmp_path / "bird"
    out.mkdir()
    image.ok("python3", "-c", RENDER_BIRD_CONF, "/flock/agent.yaml", "/bird/bird.conf",
             env={"NODE_NAME": "kind-worker"}, volumes=[(config.parent, "/flock"), (out, "/bird")])
    text = (out / "bird.conf").read_text()
    assert "198.51.100.0/24" in text and f"neighbor {TOR_V4} as 65000" in text, text
    image.ok("bird", "-p", "-c", "/bird/bird.conf", volumes=[(out, "/bird")])


def test_the_images_bird_accepts_the_kind_guides_tor_config(image: Image) -> None:
    # Mounted where the guide's `docker run` mounts it.
    image.ok("bird", "-p", "-c", "/etc/bird/tor.conf", volumes=[(KIND / "tor-bird.conf", "/etc/bird/tor.conf")])


def test_the_image_has_the_datapath_tools_and_leaves_the_build_tools_behind(image: Image) -> None:
    out = image.ok("sh", "-c", "nft --version && conntrack --version && ip -V && bird --version 2>&1")
    assert "nftables" in out and "conntrack" in out and "iproute2" in out and "BIRD version 2." in out, out
    assert image.ok("cat", "/etc/debian_version").startswith("12."), "Debian bookworm"
    leftovers = image.run("sh", "-c", "command -v gcc; command -v make; command -v pip; ls /opt/flock/bin/pip*")
    assert leftovers.stdout == "", f"build tools in the final image: {leftovers.stdout}"
