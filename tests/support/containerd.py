"""containerd as a real CNI caller: started inside a node netns, driven through its CRI API.

This is the runtime side of a kubelet-less node: Debian's containerd (1.6) with its CRI
plugin, which execs the CNI plugins of a conf dir exactly as under kubelet
(``CNI_ARGS`` with ``K8S_POD_NAMESPACE``/``K8S_POD_NAME``/``K8S_POD_UID``…, DEL on
StopPodSandbox and again, with an empty ``CNI_NETNS``, on RemovePodSandbox). The test
drives it with :class:`CriClient` (grpcio, messages generated at run time from
``cri/runtime_v1.proto``). ``shared/notes/containerd.md`` records what was shown to work
here; the pieces, and why:

* containerd runs in the node netns and in a **private mount namespace**
  (``nsenter --net=… unshare -m``, not ``ip netns exec``, which remounts /sys and hides
  the cgroup mounts runc needs). It writes to fixed paths whatever its config says
  (``/run/containerd``, ``/var/lib/cni``, ``/etc``…), so /etc, /opt, /var/lib and /run
  are overlay-mounted there onto folders of the run dir: nothing lands on the host.
* **The sandbox netns must be visible to flock-agent**, which opens ``CNI_NETNS`` in its
  own mount namespace (the test's). containerd's default ``/var/run/netns/cni-…`` would
  sit in the private overlay, so ``netns_mounts_under_state_dir`` moves them to
  ``<rundir>/state/io.containerd.grpc.v1.cri/netns``, and that folder is a *shared*
  bind mount made in the test's mount namespace before containerd starts: containerd's
  nsfs mounts there propagate back, at the same path. Every other mount containerd's
  namespace inherited is made private first, so nothing else it mounts propagates out.
  (On a real node the agent's pod needs the same: the host's /var/run/netns mounted with
  ``mountPropagation: HostToContainer``.)
* runc fails with "can't get final child's PID from pipe: EOF" (no CAP_SYS_RESOURCE
  here): ``restrict_oom_score_adj = true``. No AppArmor profiles are loaded into the host
  kernel: ``disable_apparmor = true``.
* No registry: the sandbox ("pause") image is built by hand from Debian's static busybox
  and imported with ``ctr`` into namespace ``k8s.io``.
* The CRI plugin always adds a loopback network (plugin ``loopback``) before the conf
  dir's network, so the CNI bin dir also needs the reference ``loopback`` plugin.

Teardown (also on failure): leftover sandboxes are stopped and removed through CRI,
containerd gets SIGTERM by its PID, then the container processes and shims it left
(found by PID: pid files in its state dir, and every process still in its private mount
namespace) are killed by PID, the shared bind mount is detached, and the (empty) cgroup
folders runc made for our sandboxes (under a cgroup parent of their own) are removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import io
import json
import os
import pathlib
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

PROTO = pathlib.Path(__file__).with_name("cri") / "runtime_v1.proto"
SANDBOX_IMAGE = "localhost/flock-pause:1"
CRI_NAMESPACE = "k8s.io"  # containerd namespace of the CRI plugin's images and containers
REFERENCE_PLUGINS = pathlib.Path("/usr/lib/cni")
NEEDED_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "nsenter", "unshare", "mount", "umount")


def missing_tools() -> list[str]:
    """What this machine lacks to run containerd here (empty: nothing)."""
    missing = [tool for tool in NEEDED_TOOLS if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
               is None]
    if busybox() is None:
        missing.append("busybox (Debian's busybox-static)")
    if not (REFERENCE_PLUGINS / "loopback").exists():
        missing.append("/usr/lib/cni/loopback (Debian's containernetworking-plugins)")
    try:
        import grpc  # noqa: F401
        import grpc_tools  # noqa: F401
    except ImportError:
        missing.append("grpcio + grpcio-tools (the test extra)")
    return missing


def busybox() -> pathlib.Path | None:
    """A statically linked busybox (it runs in an image with no libc)."""
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = pathlib.Path(candidate)
        if path.exists() and b"ld-linux" not in path.read_bytes()[:4096 * 16]:
            return path
    return None


# ---------------------------------------------------------------------------
# CRI client
# ---------------------------------------------------------------------------

_messages: ModuleType | None = None


def cri_messages() -> ModuleType:
    """The runtime.v1 messages of ``cri/runtime_v1.proto``, generated once per process.

    Generated at run time with grpc_tools' protoc (not committed), so the generated code
    always matches the installed protobuf runtime.
    """
    global _messages
    if _messages is None:
        from grpc_tools import protoc

        include = pathlib.Path(protoc.__file__).parent / "_proto"
        with tempfile.TemporaryDirectory(prefix="flock-cri-") as out:
            code = protoc.main(["protoc", f"-I{PROTO.parent}", f"-I{include}", f"--python_out={out}", str(PROTO)])
            if code != 0:
                raise RuntimeError(f"protoc could not compile {PROTO} (exit {code})")
            name = f"{PROTO.stem}_pb2"
            spec = importlib.util.spec_from_file_location(name, pathlib.Path(out) / f"{name}.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        _messages = module
    return _messages


class CriClient:
    """kubelet's side of the CRI RuntimeService, for the calls the tests make.

    Blocking (grpcio): call it from a thread when the test's event loop serves the API
    that the agent asks during an ADD.
    """

    SERVICE = "/runtime.v1.RuntimeService/"

    def __init__(self, socket: pathlib.Path, timeout: float = 120.0) -> None:
        import grpc

        self.pb = cri_messages()
        self.timeout = timeout
        self._grpc = grpc
        self.channel = grpc.insecure_channel(f"unix://{socket}", options=[("grpc.enable_http_proxy", 0)])

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: str, request: Any, answer: Any, timeout: float | None = None) -> Any:
        # ``answer``: a message class protoc generated at run time (untyped).
        call = self.channel.unary_unary(self.SERVICE + method, request_serializer=type(request).SerializeToString,
                                        response_deserializer=answer.FromString)
        return call(request, timeout=timeout or self.timeout)

    def version(self, timeout: float | None = None) -> Any:
        return self._call("Version", self.pb.VersionRequest(version="v1"), self.pb.VersionResponse, timeout)

    def run_pod_sandbox(self, *, name: str, namespace: str, uid: str, cgroup_parent: str = "",
                        attempt: int = 0) -> str:
        """RunPodSandbox as kubelet sends it for a Pod; returns the sandbox id."""
        pb = self.pb
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, namespace=namespace, uid=uid, attempt=attempt),
            hostname=name,
            labels={"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace,
                    "io.kubernetes.pod.uid": uid},
            linux=pb.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent))
        answer = self._call("RunPodSandbox", pb.RunPodSandboxRequest(config=config), pb.RunPodSandboxResponse)
        return str(answer.pod_sandbox_id)

    def stop_pod_sandbox(self, sandbox_id: str) -> None:
        self._call("StopPodSandbox", self.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id),
                   self.pb.StopPodSandboxResponse)

    def remove_pod_sandbox(self, sandbox_id: str) -> None:
        self._call("RemovePodSandbox", self.pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id),
                   self.pb.RemovePodSandboxResponse)

    def pod_sandbox_status(self, sandbox_id: str) -> tuple[Any, dict[str, Any]]:
        """(PodSandboxStatus, the verbose "info" document: OCI spec, pid, netns path…)."""
        answer = self._call("PodSandboxStatus", self.pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id,
                                                                                 verbose=True),
                            self.pb.PodSandboxStatusResponse)
        return answer.status, json.loads(answer.info.get("info", "{}"))

    def is_not_found(self, error: BaseException) -> bool:
        return isinstance(error, self._grpc.RpcError) and error.code() == self._grpc.StatusCode.NOT_FOUND


def sandbox_pod_ips(status: Any) -> list[str]:
    """The pod IPs containerd took from the CNI result (first, then additional ones)."""
    return [status.network.ip, *(ip.ip for ip in status.network.additional_ips)] if status.network.ip else []


def sandbox_netns_path(info: dict[str, Any]) -> str:
    """The sandbox's network namespace path, from PodSandboxStatus(verbose) info."""
    for namespace in info["runtimeSpec"]["linux"]["namespaces"]:
        if namespace["type"] == "network":
            return str(namespace["path"])
    raise LookupError("the sandbox's OCI spec has no network namespace")


# ---------------------------------------------------------------------------
# Watching what a runtime asks flock
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PluginExec:
    """One exec of flock-cni as the runtime made it: the CNI_* environment it forwarded."""

    env: dict[str, str]

    @property
    def command(self) -> str:
        return self.env.get("CNI_COMMAND", "")

    @property
    def netns(self) -> str | None:
        """CNI_NETNS, "" when set empty, None when the runtime did not set it at all."""
        return self.env.get("CNI_NETNS")

    @property
    def args(self) -> dict[str, str]:
        return dict(pair.split("=", 1) for pair in self.env.get("CNI_ARGS", "").split(";") if "=" in pair)


class RequestRecorder:
    """A unix socket between flock-cni and the agent that records each request it relays.

    The conflist given to the runtime names this socket: every request that arrives here
    came from flock-cni exec'd by the runtime, with the runtime's CNI_* environment (flock-cni
    forwards all of it, CNI_NETNS set empty included). That is the only place a DEL's empty
    CNI_NETNS can be seen from outside: flock's agent logs nothing for a DEL of a container
    it no longer knows. (A /proc watch cannot see a static flock-cni reliably: it lives for
    a millisecond or two.) Runs on threads of the test process; :meth:`close` stops them.
    """

    def __init__(self, path: pathlib.Path, agent_socket: str, timeout: float = 150) -> None:
        self.path = path
        self.agent_socket = agent_socket
        self.timeout = timeout
        self.requests: list[PluginExec] = []
        self._lock = threading.Lock()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(16)
        self._server.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="cni-request-recorder", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def watch(self) -> Iterator[RecordedExecs]:
        """The requests relayed while the block runs, in ``.execs``."""
        with self._lock:
            start = len(self.requests)
        seen = RecordedExecs([])
        try:
            yield seen
        finally:
            with self._lock:
                seen.execs.extend(self.requests[start:])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()
        self.path.unlink(missing_ok=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._relay, args=(conn,), name="cni-request-relay", daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        with conn, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as agent:
            conn.settimeout(self.timeout)
            agent.settimeout(self.timeout)
            try:
                request = _read_frame(conn)
                env = json.loads(request[4:])["env"]
                with self._lock:
                    self.requests.append(PluginExec({k: v for k, v in env.items() if k.startswith("CNI_")}))
                agent.connect(self.agent_socket)
                agent.sendall(request)
                conn.sendall(_read_frame(agent))
            except (OSError, ValueError, KeyError):
                return  # the shim then reports "flock-agent is not answering", which the test sees


@dataclasses.dataclass
class RecordedExecs:
    execs: list[PluginExec]

    def commands(self) -> list[str]:
        return [e.command for e in self.execs]


def _read_frame(conn: socket.socket) -> bytes:
    """One whole frame (4-byte big-endian length + body), header included."""
    data = b""
    size = 4
    while len(data) < size:
        chunk = conn.recv(min(size - len(data), 1 << 16))
        if not chunk:
            raise ConnectionError("closed mid-message")
        data += chunk
        if size == 4 and len(data) >= 4:
            size = 4 + int.from_bytes(data[:4], "big")
    return data


# ---------------------------------------------------------------------------
# The sandbox image
# ---------------------------------------------------------------------------


def _blob(layout: tarfile.TarFile, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    _add_file(layout, f"blobs/sha256/{digest}", data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _add_file(archive: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    archive.addfile(info, io.BytesIO(data))


def oci_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


def build_pause_image(path: pathlib.Path, name: str = SANDBOX_IMAGE) -> pathlib.Path:
    """An OCI image archive (oci-layout) with a static busybox that sleeps: a pause image."""
    static = busybox()
    if static is None:
        raise RuntimeError("no static busybox (Debian's busybox-static)")
    layer_bytes = io.BytesIO()
    with tarfile.open(fileobj=layer_bytes, mode="w") as layer:
        bin_dir = tarfile.TarInfo("bin")
        bin_dir.type, bin_dir.mode = tarfile.DIRTYPE, 0o755
        layer.addfile(bin_dir)
        _add_file(layer, "bin/busybox", static.read_bytes(), 0o755)
    layer_data = layer_bytes.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as layout:
        layer_desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar", **_blob(layout, layer_data)}
        config = {
            "architecture": oci_arch(), "os": "linux",
            # SIGKILL ends it on StopPodSandbox; sleep as pid 1 ignores SIGTERM.
            "config": {"Entrypoint": ["/bin/busybox", "sleep", "86400"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
        }
        config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
                       **_blob(layout, json.dumps(config).encode())}
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": config_desc, "layers": [layer_desc]}
        manifest_desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                         **_blob(layout, json.dumps(manifest).encode()),
                         "platform": {"architecture": oci_arch(), "os": "linux"},
                         "annotations": {"io.containerd.image.name": name,
                                         "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]}}
        _add_file(layout, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        _add_file(layout, "index.json", json.dumps({"schemaVersion": 2, "manifests": [manifest_desc]}).encode())
    return path


# ---------------------------------------------------------------------------
# containerd
# ---------------------------------------------------------------------------

CONFIG = """\
version = 2
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
root = "{rundir}/root"
state = "{rundir}/state"

[grpc]
  address = "{rundir}/containerd.sock"

[ttrpc]
  address = "{rundir}/containerd.sock.ttrpc"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{rundir}/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{image}"
    restrict_oom_score_adj = true        # runc: no CAP_SYS_RESOURCE here
    disable_apparmor = true              # never load profiles into the host kernel
    netns_mounts_under_state_dir = true  # sandbox netns under state/…/netns, shared with the agent
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{bin_dir}"
      conf_dir = "{conf_dir}"
      max_conf_num = 1
"""

# Runs as: nsenter --net=/run/netns/NODE unshare -m --propagation unchanged sh start.sh
START = """\
#!/bin/sh
set -e
# Everything this namespace inherited as shared becomes private, except the sandbox
# netns folder: only containerd's netns mounts there propagate back to the test.
{python} -I {rundir}/private_mounts.py {netns_dir}
for d in etc opt var/lib run; do
  n=$(echo $d | tr / _); mkdir -p {rundir}/ov/$n/u {rundir}/ov/$n/w
  mount -t overlay flock-test-ov -o lowerdir=/$d,upperdir={rundir}/ov/$n/u,workdir={rundir}/ov/$n/w /$d
done
exec containerd --config {rundir}/config.toml
"""

PRIVATE_MOUNTS = r"""
import re, subprocess, sys

keep = sys.argv[1]
for line in open("/proc/self/mountinfo"):
    fields = line.split()
    optional = fields[6:fields.index("-")]
    target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
    if target != keep and any(tag.startswith("shared:") for tag in optional):
        subprocess.run(["mount", "--make-private", target], check=True)
"""


@dataclasses.dataclass
class Containerd:
    """A containerd (CRI plugin) inside ``node_netns``; see the module docstring."""

    rundir: pathlib.Path
    node_netns: str
    process: subprocess.Popen[bytes] | None = None
    mount_ns: str = ""
    """``mnt:[inode]`` of containerd's private mount namespace: every process in it is ours."""
    cri: CriClient | None = None
    shared_mount: bool = False
    """The sandbox netns folder is bind-mounted (shared) in the test's mount namespace."""
    sandboxes: list[str] = dataclasses.field(default_factory=list)
    """Sandbox ids run through :meth:`run_pod_sandbox` and not removed yet."""
    cgroup_parent: str = dataclasses.field(default_factory=lambda: f"/flk-ctr-{os.getpid()}-{secrets.token_hex(3)}")
    """Our sandboxes' cgroup parent: without one, containerd puts them under a shared
    ``/k8s.io`` that outlives the run. Removed (empty) at :meth:`stop`."""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def socket(self) -> pathlib.Path:
        return self.rundir / "containerd.sock"

    @property
    def netns_dir(self) -> pathlib.Path:
        return netns_dir(self.rundir)

    @property
    def log_path(self) -> pathlib.Path:
        return self.rundir / "containerd.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def ctr(self, *args: str, timeout: float = 120) -> str:
        """``ctr`` inside containerd's mount and network namespaces (it writes to fixed paths too)."""
        cmd = ["nsenter", "-t", str(self.pid), "-m", "-n", "ctr", "-a", str(self.socket), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def import_image(self, archive: pathlib.Path) -> None:
        self.ctr("-n", CRI_NAMESPACE, "images", "import", str(archive))

    @property
    def client(self) -> CriClient:
        assert self.cri is not None, "containerd is not running"
        return self.cri

    def run_pod_sandbox(self, *, name: str, namespace: str, uid: str) -> str:
        sandbox = self.client.run_pod_sandbox(name=name, namespace=namespace, uid=uid,
                                              cgroup_parent=self.cgroup_parent)
        self.sandboxes.append(sandbox)
        return sandbox

    def stop_pod_sandbox(self, sandbox: str) -> None:
        self.client.stop_pod_sandbox(sandbox)

    def remove_pod_sandbox(self, sandbox: str) -> None:
        self.client.remove_pod_sandbox(sandbox)
        if sandbox in self.sandboxes:
            self.sandboxes.remove(sandbox)

    def stop(self) -> None:
        """Stop everything started for this containerd, by PID; safe to call twice.

        Leftover sandboxes are stopped and removed through the CRI first (best effort:
        the CRI then tears their networks down), then containerd gets SIGTERM, then the
        containers and shims it left are killed, the shared bind mount is detached and
        the empty cgroup folders of cut-short containers are removed.
        """
        if self.cri is not None:
            if self.process is not None and self.process.poll() is None:
                _remove_sandboxes(self)
            self.cri.close()
            self.cri = None
        _stop_everything(self.rundir, self.process, self.mount_ns)
        if self.shared_mount:
            subprocess.run(["umount", "--lazy", str(self.netns_dir)], check=False, capture_output=True)
            self.shared_mount = False
        _remove_cgroups(self)


def netns_dir(rundir: pathlib.Path) -> pathlib.Path:
    """Where containerd mounts sandbox netns (``netns_mounts_under_state_dir``)."""
    return rundir / "state" / "io.containerd.grpc.v1.cri" / "netns"


def _mount_ns(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")


def _pids_in_mount_ns(mount_ns: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/ns/mnt") == mount_ns:
                    found.append(int(entry))
    return found


def _children(pids: set[int]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                status = pathlib.Path(f"/proc/{entry}/status").read_text()
                ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
                if ppid in pids:
                    found.append(int(entry))
    return found


def _pid_files(rundir: pathlib.Path) -> dict[str, list[int]]:
    """Container (init.pid) and shim (shim.pid) PIDs from the v2 runtime's bundle dirs."""
    found: dict[str, list[int]] = {"init.pid": [], "shim.pid": []}
    tasks = rundir / "state" / "io.containerd.runtime.v2.task"
    for kind in found:
        for pid_file in tasks.glob(f"*/*/{kind}"):
            with contextlib.suppress(OSError, ValueError):
                found[kind].append(int(pid_file.read_text().strip()))
    return found


def _kill(pid: int, signum: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in pids):
        time.sleep(0.05)


def start_containerd(node_netns: str, rundir: pathlib.Path, *, cni_bin_dir: pathlib.Path,
                     cni_conf_dir: pathlib.Path, start_timeout: float = 60) -> Containerd:
    """Start containerd in ``node_netns`` (see the module docstring) and wait for its CRI.

    ``cni_bin_dir`` gets the reference ``loopback`` plugin beside what is there already.
    The caller must call :meth:`Containerd.stop`; if the start fails, everything it began
    is stopped before the error is raised.
    """
    rundir.mkdir(parents=True, exist_ok=True)
    rundir = rundir.resolve()
    loopback = cni_bin_dir / "loopback"
    if not loopback.exists():
        loopback.symlink_to(REFERENCE_PLUGINS / "loopback")
    shared = netns_dir(rundir)
    shared.mkdir(parents=True)
    (rundir / "config.toml").write_text(CONFIG.format(rundir=rundir, image=SANDBOX_IMAGE, bin_dir=cni_bin_dir,
                                                      conf_dir=cni_conf_dir))
    (rundir / "private_mounts.py").write_text(PRIVATE_MOUNTS)
    (rundir / "start.sh").write_text(START.format(rundir=rundir, netns_dir=shared, python=sys.executable))

    containerd = Containerd(rundir, node_netns)
    try:
        subprocess.run(["mount", "--bind", str(shared), str(shared)], check=True, capture_output=True)
        containerd.shared_mount = True
        subprocess.run(["mount", "--make-shared", str(shared)], check=True, capture_output=True)
        with open(containerd.log_path, "ab") as log:
            containerd.process = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{node_netns}", "unshare", "-m", "--propagation", "unchanged",
                 "sh", str(rundir / "start.sh")],
                stdout=log, stderr=subprocess.STDOUT, cwd=rundir, start_new_session=True)
        containerd.mount_ns = _await_mount_ns(containerd.process, timeout=10)
        containerd.cri = CriClient(containerd.socket)
        _await_cri(containerd, start_timeout)
    except BaseException:
        containerd.stop()
        raise
    return containerd


def _await_mount_ns(process: subprocess.Popen[bytes], timeout: float) -> str:
    """containerd's mount namespace, once unshare has made it (it differs from ours)."""
    ours = _mount_ns(os.getpid())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"containerd's start script exited with {process.returncode} (see containerd.log)")
        with contextlib.suppress(OSError):
            theirs = _mount_ns(process.pid)
            if theirs != ours:
                return theirs
        time.sleep(0.01)
    raise RuntimeError("containerd's start script did not enter a mount namespace of its own")


def _await_cri(containerd: Containerd, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        assert containerd.process is not None
        if containerd.process.poll() is not None:
            raise RuntimeError(f"containerd exited with {containerd.process.returncode}:\n"
                               + "\n".join(containerd.log().splitlines()[-30:]))
        if containerd.socket.exists():
            try:
                containerd.client.version(timeout=2)
                return
            except Exception as exc:
                last = exc
        time.sleep(0.1)
    raise RuntimeError(f"containerd's CRI did not answer within {timeout}s: {last}")


def _remove_sandboxes(containerd: Containerd) -> None:
    """Best effort: a failed test may leave sandboxes; the CRI tears their networks down."""
    for sandbox in list(containerd.sandboxes):
        for call in (containerd.client.stop_pod_sandbox, containerd.client.remove_pod_sandbox):
            try:
                call(sandbox)
            except Exception as exc:
                print(f"teardown: {call.__name__} {sandbox[:12]}: {exc}")


def _stop_everything(rundir: pathlib.Path, process: subprocess.Popen[bytes] | None, mount_ns: str) -> None:
    """containerd by its PID, then what it left: containers and shims, by PID."""
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    pid_files = _pid_files(rundir)
    # Never our own mount namespace (a start that failed early may not have left it).
    private = bool(mount_ns) and mount_ns != _mount_ns(os.getpid())
    shims = set(pid_files["shim.pid"]) | (set(_pids_in_mount_ns(mount_ns)) if private else set())
    containers = set(pid_files["init.pid"]) | set(_children(shims))
    for pid in containers:
        _kill(pid)
    _wait_gone(list(containers), timeout=10)
    for pid in shims:
        _kill(pid)
    _wait_gone(list(shims), timeout=10)


def _remove_cgroups(containerd: Containerd) -> None:
    """runc makes ``<cgroup parent>/<container id>`` in every hierarchy and removes the
    leaf on delete, not the parent, nor anything when the run was cut short."""
    root = pathlib.Path("/sys/fs/cgroup")
    hierarchies = [root, *(path for path in root.iterdir() if path.is_dir() and not path.is_symlink())]
    for hierarchy in hierarchies:
        parent = hierarchy / containerd.cgroup_parent.strip("/")
        if not parent.is_dir():
            continue
        for leaf in (path for path in parent.iterdir() if path.is_dir()):
            with contextlib.suppress(OSError):
                leaf.rmdir()
        with contextlib.suppress(OSError):
            parent.rmdir()
