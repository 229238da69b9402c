"""The lab's fabric: namespaces, links, BIRDs, agents and their bookkeeping.

Everything lives in network namespaces named ``flk-lab-<id>-*`` (``<id>``: random, one
per run, written to ``<run dir>/lab-id`` before anything is made) and a run directory
(default /run/flock-lab). Every namespace and process is recorded in
``<run dir>/state.json`` the moment it exists, so ``flock lab down`` can remove it all
even after a crash or a killed run, and nothing of another lab. Nothing is ever changed
in the root namespace.

Addressing (documentation ranges only):
- ToR <-> node i: link i, 192.0.2.4i/30 (ToR .4i+1, node .4i+2), 2001:db8:ffff:i::/64
- ToR <-> client: link 31, 192.0.2.124/30 (ToR .125, client .126), 2001:db8:ffff:1f::/64
- node i's pods: 203.0.113.64i/26 and 2001:db8:200:i::/64
- the anycast service: 198.51.100.10 and 2001:db8:100::10 (pools 198.51.100.0/24, 2001:db8:100::/64)
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import pathlib
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import yaml

from flock.adapters.files import write_atomically
from flock.cni.install import install as install_cni

PREFIX = "flk-lab-"
TOR_ASN = 65000
CLIENT_LINK = 31
ANYCAST = ("198.51.100.10", "2001:db8:100::10")
POOLS = ("198.51.100.0/24", "2001:db8:100::/64")
ROUTE_PROTOCOL = 201
DEFAULT_RUN_DIR = pathlib.Path("/run/flock-lab")


def sh(*args: str, netns: str | None = None, check: bool = True) -> str:
    cmd = ["ip", "netns", "exec", netns, *args] if netns else list(args)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def sysctl(netns: str, key: str, value: str) -> None:
    sh("sysctl", "-qw", f"{key}={value}", netns=netns)


@dataclasses.dataclass(frozen=True)
class Link:
    index: int
    ifname: str
    a_v4: ipaddress.IPv4Interface  # the ToR's side
    b_v4: ipaddress.IPv4Interface
    a_v6: ipaddress.IPv6Interface
    b_v6: ipaddress.IPv6Interface


def link_addresses(index: int) -> Link:
    v4 = ipaddress.IPv4Network(f"192.0.2.{4 * index}/30")
    v6 = ipaddress.IPv6Network(f"2001:db8:ffff:{index:x}::/64")
    return Link(index, f"fl{index}", ipaddress.IPv4Interface(f"{v4[1]}/30"), ipaddress.IPv4Interface(f"{v4[2]}/30"),
                ipaddress.IPv6Interface(f"{v6[1]}/64"), ipaddress.IPv6Interface(f"{v6[2]}/64"))


def connect(a: str, b: str, index: int) -> Link:
    """veth ``fl<index>`` between namespaces a and b, created in a, its peer moved to b."""
    link = link_addresses(index)
    sh("ip", "link", "add", link.ifname, "type", "veth", "peer", "name", link.ifname, "netns", b, netns=a)
    for netns, v4, v6 in ((a, link.a_v4, link.a_v6), (b, link.b_v4, link.b_v6)):
        sh("ip", "addr", "add", str(v4), "dev", link.ifname, netns=netns)
        sh("ip", "-6", "addr", "add", str(v6), "dev", link.ifname, "nodad", netns=netns)
        sh("ip", "link", "set", link.ifname, "up", netns=netns)
    return link


def tor_bird_config(router_id: str, neighbors: Iterable[tuple[str, int]], asn: int = TOR_ASN, *,
                    bfd: bool = False) -> str:
    """A top-of-rack BIRD: eBGP to every node address (one session per address, its own
    family), accepting everything, announcing nothing, ECMP (merge paths) into its kernel.

    ``bfd``: the ToR as the README's Fabric section asks a router facing flock's nodes to
    be set up: ``protocol bfd`` and ``bfd on`` in every node session (hard down when the
    node's BFD goes silent; not ``bfd graceful``). BIRD's BFD defaults at the ToR (it may
    receive every 10 ms): it declares a node down after the node's multiplier x the node's
    interval, 300 ms x 3 with flock's defaults. A node that runs no BFD keeps its session
    (its BFD session stays Down at the ToR, which BIRD never acts on).
    """
    session_bfd = "\n\tbfd on;\t# a node silent for its BFD detection time is down" if bfd else ""
    sessions = "".join(f"""
protocol bgp node_{address.replace('.', '_').replace(':', '_')} {{
\tlocal as {asn};
\tneighbor {address} as {peer_asn};
\thold time 9; keepalive time 3; connect retry time 2;{session_bfd}
\tipv{ipaddress.ip_address(address).version} {{ import all; export none; }};
}}
""" for address, peer_asn in neighbors)
    bfd_protocol = "protocol bfd tor_bfd { }\n" if bfd else ""
    return f"""# top-of-rack router of flock's lab
log stderr all;
router id {router_id};
protocol device {{ }}
protocol kernel kernel4 {{ ipv4 {{ import none; export all; }}; merge paths on; }}
protocol kernel kernel6 {{ ipv6 {{ import none; export all; }}; merge paths on; }}
{bfd_protocol}{sessions}"""


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    index: int
    name: str  # the Kubernetes node name: node-a, node-b, ...
    netns: str
    link: Link
    asn: int
    pod_cidrs: tuple[str, str]

    @property
    def router_id(self) -> str:
        return str(self.link.b_v4.ip)


@dataclasses.dataclass(frozen=True)
class Names:
    """The namespace names of one lab run: ``flk-lab-<id>-<role>``."""

    lab_id: str

    def netns(self, role: str) -> str:
        return f"{PREFIX}{self.lab_id}-{role}"

    @property
    def tor(self) -> str:
        return self.netns("tor")

    @property
    def client(self) -> str:
        return self.netns("client")

    def pod(self, name: str) -> str:
        return self.netns(f"pod-{name}")


def lab_id(run_dir: pathlib.Path) -> str | None:
    """The id of the lab whose run dir this is (None: no lab was started there)."""
    with contextlib.suppress(OSError):
        return (run_dir / "lab-id").read_text().strip() or None
    return None


def node_specs(count: int, names: Names) -> list[NodeSpec]:
    specs = []
    for i in range(count):
        letter = "abcd"[i]
        specs.append(NodeSpec(i, f"node-{letter}", names.netns(f"node-{letter}"), link_addresses(i), 65101 + i,
                              (f"203.0.113.{64 * i}/26", f"2001:db8:200:{i:x}::/64")))
    return specs


class State:
    """What the lab made, on disk, so that `down` can undo it after anything."""

    def __init__(self, run_dir: pathlib.Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / "state.json"
        self.data: dict[str, Any] = {"namespaces": [], "pids": []}
        if self.path.exists():
            with contextlib.suppress(ValueError):
                self.data = json.loads(self.path.read_text())

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, json.dumps(self.data, indent=1).encode(), 0o644)

    def add_netns(self, name: str) -> str:
        self.data["namespaces"].append(name)
        self.save()
        sh("ip", "netns", "add", name)
        sh("ip", "link", "set", "lo", "up", netns=name)
        return name

    def remove_netns(self, name: str) -> None:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        if name in self.data["namespaces"]:
            self.data["namespaces"].remove(name)
            self.save()

    def spawn(self, argv: Sequence[str], log: pathlib.Path, netns: str | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        cmd = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True, env=env)
        self.data["pids"].append(process.pid)
        self.save()
        return process

    def forget(self, process: subprocess.Popen[bytes]) -> None:
        if process.pid in self.data["pids"]:
            self.data["pids"].remove(process.pid)
            self.save()


def stop_process(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def python() -> str:
    return sys.executable


def wait_for(predicate: Callable[[], object], within: float, what: str, every: float = 0.05) -> None:
    """Call ``predicate`` every ``every`` seconds until it is true; RuntimeError naming
    ``what`` after ``within`` seconds. The lab's one way to wait for a condition (blocking:
    from async code, run it in a thread, or in a netns with flock.adapters.plumbing.in_netns)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise RuntimeError(f"lab: timed out after {within:g}s waiting for {what}")


@dataclasses.dataclass(eq=False)  # compared and hashed by identity
class Node:
    spec: NodeSpec
    dir: pathlib.Path
    bird: subprocess.Popen[bytes]
    agent: subprocess.Popen[bytes]
    agent_config: dict[str, Any]

    @property
    def cni_bin(self) -> pathlib.Path:
        return self.dir / "cni" / "bin" / "flock-cni"

    @property
    def cni_config(self) -> dict[str, Any]:
        conf = json.loads((self.dir / "cni" / "net.d" / "10-flock.conflist").read_text())
        return {"cniVersion": conf["cniVersion"], "name": conf["name"], **conf["plugins"][0]}


@dataclasses.dataclass
class Fabric:
    state: State
    names: Names
    api_url: str
    api: subprocess.Popen[bytes]
    tor_bird: subprocess.Popen[bytes]
    nodes: list[Node]
    client_link: Link
    hash_seeds: list[int]  # fib_multipath_hash_seed of the ToR, then of each node

    @property
    def run_dir(self) -> pathlib.Path:
        return self.state.run_dir


def build(run_dir: pathlib.Path, node_count: int, eligibility: str,
          datapath: dict[str, Any] | None = None, *, bfd: bool | None = None, tor_bfd: bool = False) -> Fabric:
    """Bring the whole fabric up and wait until every BGP session is established.

    ``datapath``: the agents' ``datapath`` config key (None: not written, the agent's default).
    ``bfd``: the agents' ``bird.bfd.enabled`` (None: not written, the agent's default: on).
    ``tor_bfd``: the ToR runs BFD on its node sessions (:func:`tor_bird_config`).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    names = Names(secrets.token_hex(3))
    (run_dir / "lab-id").write_text(names.lab_id + "\n")  # before anything that `down` must find
    state = State(run_dir)
    state.save()
    specs = node_specs(node_count, names)
    tor, client = names.tor, names.client
    seeds = hash_seeds(1 + node_count)

    state.add_netns(tor)
    sysctl(tor, "net.ipv4.ip_forward", "1")
    sysctl(tor, "net.ipv6.conf.all.forwarding", "1")
    hash_fields(tor)
    hash_seed(tor, seeds[0])
    state.add_netns(client)
    client_link = connect(tor, client, CLIENT_LINK)
    sh("ip", "route", "add", "default", "via", str(client_link.a_v4.ip), netns=client)
    sh("ip", "-6", "route", "add", "default", "via", str(client_link.a_v6.ip), netns=client)

    for spec in specs:
        state.add_netns(spec.netns)
        connect(tor, spec.netns, spec.index)
        sh("ip", "route", "add", "default", "via", str(spec.link.a_v4.ip), netns=spec.netns)
        sh("ip", "-6", "route", "add", "default", "via", str(spec.link.a_v6.ip), netns=spec.netns)
        # Strict reverse-path filtering, as many production nodes run; flock sets its veths loose.
        sysctl(spec.netns, "net.ipv4.conf.all.rp_filter", "1")
        sysctl(spec.netns, "net.ipv4.conf.default.rp_filter", "1")
        hash_seed(spec.netns, seeds[1 + spec.index])  # the agent sets the policy and fields

    neighbors = [(str(s.link.b_v4.ip), s.asn) for s in specs] + [(str(s.link.b_v6.ip), s.asn) for s in specs]
    tor_dir = run_dir / "tor"
    tor_dir.mkdir(parents=True, exist_ok=True)
    (tor_dir / "bird.conf").write_text(tor_bird_config(str(client_link.a_v4.ip), neighbors, bfd=tor_bfd))
    tor_bird = state.spawn(["bird", "-f", "-c", str(tor_dir / "bird.conf"), "-s", str(tor_dir / "bird.ctl")],
                           tor_dir / "bird.log", netns=tor)

    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    api = state.spawn([python(), "-m", "flock.lab.apiserver", "--lab", str(run_dir), "--port", str(port),
                       *[f"--node={s.name}={','.join(s.pod_cidrs)}" for s in specs],
                       *[f"--node-address={s.name}={s.link.b_v4.ip}" for s in specs]], run_dir / "apiserver.log")
    wait_for(lambda: _answers(port), 20, "the emulated API server")
    kubeconfig = run_dir / "kubeconfig"
    kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: lab, cluster: {{server: "{api_url}"}}}}]
users: [{{name: lab, user: {{token: lab}}}}]
contexts: [{{name: lab, context: {{cluster: lab, user: lab, namespace: default}}}}]
current-context: lab
""")

    nodes = [start_node(state, spec, run_dir, kubeconfig, eligibility, datapath, bfd) for spec in specs]
    fabric = Fabric(state, names, api_url, api, tor_bird, nodes, client_link, seeds)
    wait_for(lambda: bgp_established(tor_dir / "bird.ctl", 2 * len(specs)), 60, "BGP sessions ToR <-> nodes")
    return fabric


def hash_fields(netns: str) -> None:
    """Hash ECMP on the 5-tuple the kernel reads from the packet (policy 3, fields 0x37).

    Policy 1 reuses a hash a packet already carries (set by the client's socket and kept
    across veths), which a TCP retransmission re-rolls: a connection could then change
    next hop mid-stream. Falls back to policy 1 on kernels without custom fields.
    """
    for family in ("ipv4", "ipv6"):
        try:
            sysctl(netns, f"net.{family}.fib_multipath_hash_fields", "0x0037")
            sysctl(netns, f"net.{family}.fib_multipath_hash_policy", "3")
        except RuntimeError:
            sysctl(netns, f"net.{family}.fib_multipath_hash_policy", "1")


def hash_seeds(count: int) -> list[int]:
    """``count`` distinct random non-zero ECMP hash seeds (0 would mean the kernel's default)."""
    seeds: list[int] = []
    while len(seeds) < count:
        seed = secrets.randbits(32)
        if seed and seed not in seeds:
            seeds.append(seed)
    return seeds


def hash_seed(netns: str, seed: int) -> None:
    """This namespace's own ECMP hash seed.

    Every namespace of the lab shares one kernel: with the same seed and the same 5-tuple,
    a node would re-use the ToR's decision and the flows the ToR sends it would pile onto
    one of its pods. ``net.ipv4.fib_multipath_hash_seed`` (per netns, kernel 6.11+) seeds
    the IPv6 multipath hash too; there is no ``net.ipv6`` one. Best effort: an older
    kernel has none (the lab then shows the polarisation in its spread over pods).
    """
    try:
        sysctl(netns, "net.ipv4.fib_multipath_hash_seed", str(seed))
    except RuntimeError as exc:
        print(f"flock lab: no per-namespace ECMP hash seed on this kernel ({exc})", file=sys.stderr)


def start_node(state: State, spec: NodeSpec, run_dir: pathlib.Path, kubeconfig: pathlib.Path,
               eligibility: str, datapath: dict[str, Any] | None = None, bfd: bool | None = None) -> Node:
    directory = run_dir / spec.name
    (directory / "state").mkdir(parents=True, exist_ok=True)
    bird_conf, bird_ctl = directory / "bird.conf", directory / "bird.ctl"
    bird_conf.write_text(f"router id {spec.router_id};\nprotocol device {{ }}\n")  # the agent renders the rest
    bird = state.spawn(["bird", "-f", "-R", "-c", str(bird_conf), "-s", str(bird_ctl)], directory / "bird.log",
                       netns=spec.netns)
    wait_for(bird_ctl.exists, 10, f"BIRD of {spec.name}")
    config: dict[str, Any] = {
        "nodeName": spec.name, "hostNetns": spec.netns, "stateDir": str(directory / "state"),
        "cniSocket": str(directory / "cni.sock"),
        "anycastPools": [{"cidr": cidr} for cidr in POOLS], "routeProtocol": ROUTE_PROTOCOL,
        "tickSeconds": 2, "listen": f"127.0.0.1:{free_port()}", "eligibility": eligibility,
        "bird": {"configPath": str(bird_conf), "socket": str(bird_ctl), "routerId": spec.router_id,
                 "asn": spec.asn, "peers": [{"address": str(spec.link.a_v4.ip), "asn": TOR_ASN},
                                            {"address": str(spec.link.a_v6.ip), "asn": TOR_ASN}]},
    }
    if datapath is not None:
        config["datapath"] = datapath
    if bfd is not None:
        config["bird"]["bfd"] = {"enabled": bfd}
    (directory / "agent.yaml").write_text(yaml.safe_dump(config))
    # The static flock-cni this checkout built (make -C cni-shim; scripts/install.sh runs it).
    install_cni(directory / "cni" / "bin", directory / "cni" / "net.d", str(directory / "cni.sock"))
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    agent_bin = str(pathlib.Path(python()).with_name("flock-agent"))
    agent = state.spawn([agent_bin, "--config", str(directory / "agent.yaml")], directory / "agent.log", env=env)
    wait_for(lambda: (directory / "cni.sock").exists(), 30, f"flock-agent of {spec.name}")
    return Node(spec, directory, bird, agent, config)


def _answers(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def bgp_established(socket_path: pathlib.Path, count: int) -> bool:
    done = subprocess.run(["birdc", "-s", str(socket_path), "show", "protocols"], capture_output=True, text=True)
    return done.stdout.count("Established") >= count


def birdc(socket_path: pathlib.Path, *args: str) -> str:
    return subprocess.run(["birdc", "-s", str(socket_path), *args], capture_output=True, text=True,
                          timeout=10).stdout


def bfd_sessions(socket_path: pathlib.Path) -> dict[str, str]:
    """{neighbour address: BFD state (Up, Down, Init, AdminDown)} from ``birdc show bfd sessions``."""
    found = re.findall(r"^(\S+)\s+\S+\s+(Up|Down|Init|AdminDown)\b", birdc(socket_path, "show", "bfd", "sessions"),
                       flags=re.MULTILINE)
    return dict(found)


def tor_protocol(address: str) -> str:
    """The ToR's BGP protocol for a node address (:func:`tor_bird_config`)."""
    return f"node_{address.replace('.', '_').replace(':', '_')}"


def last_error(socket_path: pathlib.Path, protocol: str) -> str | None:
    """A BGP protocol's ``Last error`` as ``birdc show protocols all`` gives it (None: none)."""
    found = re.search(r"^\s*Last error:\s*(.+?)\s*$",
                      birdc(socket_path, "show", "protocols", "all", protocol), flags=re.MULTILINE)
    return found.group(1) if found else None


# A hung machine, as its ToR sees it: nothing. Every packet on the node's uplink is
# dropped in the node's own namespace, before anything of its stack sees it and before
# anything it sends leaves (ARP and ND too): no carrier change, no ICMP, no TCP reset.
FAILURE_TABLE = "flock_lab_failure"


def fail_uplink(netns: str, ifname: str) -> None:
    """Drop every packet on ``ifname`` of ``netns``, both ways, silently (nftables netdev
    ingress and egress hooks, policy drop; the link stays up)."""
    ruleset = f"""table netdev {FAILURE_TABLE} {{
\tchain uplink_in {{ type filter hook ingress device "{ifname}" priority -500; policy drop; }}
\tchain uplink_out {{ type filter hook egress device "{ifname}" priority -500; policy drop; }}
}}
"""
    done = subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=ruleset, capture_output=True,
                          text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"nft in {netns}: {done.stderr.strip() or done.returncode}")


def netns_pids(netns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split() if pid.isdigit()]


def freeze(pids: Iterable[int]) -> list[int]:
    """SIGSTOP each process and its group (the lab starts each in a session of its own):
    a hung process, no exit, no socket closed. Returns those it stopped; :func:`thaw`
    them (``teardown`` does too)."""
    return [pid for pid in dict.fromkeys(pids) if pid != os.getpid() and _signal(pid, signal.SIGSTOP)]


def thaw(pids: Iterable[int]) -> None:
    for pid in pids:
        _signal(pid, signal.SIGCONT)


def lab_namespaces(names: Names) -> list[str]:
    """The namespaces of one lab run, whether or not state.json recorded them."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(names.netns(""))]


def teardown(run_dir: pathlib.Path) -> list[str]:
    """Stop every recorded process, delete every namespace of this run dir's lab, remove the run dir.

    Safe on a clean machine (does nothing) and after a crash; leaves other labs alone.
    Returns what it removed.
    """
    removed: list[str] = []
    state = State(run_dir) if run_dir.exists() else None
    found = lab_id(run_dir)
    names = (state.data.get("namespaces", []) if state else []) + (lab_namespaces(Names(found)) if found else [])
    pids = list(reversed(state.data.get("pids", []))) if state else []
    pids += _stray_pids(run_dir)
    for name in dict.fromkeys(names):  # whatever still runs inside a lab namespace
        out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
        pids += [int(pid) for pid in out.split() if pid.isdigit()]
    for pid in dict.fromkeys(pids):
        if _signal(pid, signal.SIGTERM):
            removed.append(f"process {pid}")
            _signal(pid, signal.SIGCONT)  # a frozen one (node failure) acts on its SIGTERM
    deadline = time.monotonic() + 5
    for pid in dict.fromkeys(pids):
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
    for name in dict.fromkeys(names):
        done = subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        if done.returncode == 0:
            removed.append(f"netns {name}")
    if run_dir.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
    return removed


def _signal(pid: int, signum: int) -> bool:
    """Signal a lab process and its group (the lab starts each in a session of its own)."""
    try:
        os.killpg(pid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        pass
    try:
        os.kill(pid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    return False


def _stray_pids(run_dir: pathlib.Path) -> list[int]:
    """Processes whose command line names the run dir (lost from state.json by a crash):
    an argument that is the run dir or a path inside it. Never this process or one of its
    ancestors (``timeout 300 flock lab run --run-dir …`` names it too)."""
    marker = str(run_dir).rstrip("/").encode()
    ours = _ancestors()
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in ours:
            with contextlib.suppress(OSError):
                args = (entry / "cmdline").read_bytes().split(b"\0")
                if any(arg == marker or arg.endswith(b"=" + marker) or marker + b"/" in arg for arg in args):
                    found.append(int(entry.name))
    return found


def _ancestors() -> set[int]:
    """This process and its ancestors."""
    found, pid = set(), os.getpid()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return found
