"""The kind guide (README, "Run on kind") is exact: its files parse and agree with each
other and with the commands the README gives, and its ToR routes flock nodes' anycast IPs.

kind and docker cannot run where flock is developed; what can be checked without them is
checked here (the image itself: tests/image).
"""

from __future__ import annotations

import ipaddress
import json
import pathlib
import re
import shlex
import subprocess
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from flock.adapters.bird import render_bird_conf
from flock.adapters.configfile import load_config
from flock.core.annotation import parse_anycast
from flock.core.birdview import bird_view
from flock.core.pools import in_pools
from flock.core.settings import parse_config
from tests.chart.rendering import CHART, REPO, load_values, render, run_render_config
from tests.support import birdlab
from tests.support.netns import sh

KIND = REPO / "deploy" / "kind"
KUBERNETES_VERSION = "1.35.0"  # a recent release; the Deployment's preStop sleep needs 1.30+
# Stand-ins for the ToR's addresses on kind's network (known only once its container runs).
SHELL_VARIABLES = {"TOR_V4": "192.0.2.1", "TOR_V6": "2001:db8:ffff::1"}


def guide() -> str:
    """The README's "Run on kind" section, up to the next heading."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("\n### Run on kind\n") + 1
    body = readme.index("\n", start)
    following = re.search(r"^#", readme[body:], re.MULTILINE)
    return readme[start:body + following.start()] if following else readme[start:]


def guide_commands() -> list[list[str]]:
    """The commands of the guide's ``sh`` blocks split into words as the shell would, the
    ToR's address variables replaced by their stand-ins."""
    commands: list[list[str]] = []
    for block in re.findall(r"```sh\n(.*?)```", guide(), re.DOTALL):
        pending = ""
        for line in block.splitlines():
            for name, value in SHELL_VARIABLES.items():
                line = line.replace(f"${name}", value)
            pending += line + "\n"
            if line.endswith("\\"):
                continue
            try:
                words = shlex.split(pending.replace("\\\n", " "), comments=True)  # \<newline>: continued
            except ValueError:  # a quoted argument goes on over the next lines
                continue
            pending = ""
            if words:
                commands.append(words)
        assert pending == "", f"unbalanced quotes in the guide: {pending}"
    return commands


def guide_command(*prefix: str) -> list[str]:
    found = [c for c in guide_commands() if c[:len(prefix)] == list(prefix)]
    assert len(found) == 1, f"expected one `{' '.join(prefix)}` in the guide, found {found}"
    return found[0]


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of values: maps merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def helm_install() -> tuple[str, str, dict[str, Any]]:
    """(chart path, namespace, values) of the guide's `helm install`, read as helm reads them."""
    words = guide_command("helm", "install")
    assert words[2] == "flock", words
    chart, namespace = words[3], "default"
    values: dict[str, Any] = {}
    sets: list[str] = []
    options = iter(words[4:])
    for option in options:
        if option in ("-n", "--namespace"):
            namespace = next(options)
        elif option in ("-f", "--values"):
            values = merge(values, load_values(REPO / next(options)))
        elif option == "--set":
            sets.append(next(options))
        else:
            raise AssertionError(f"this test does not know helm's {option}")
    # Several --set go into one map in order, as helm's strvals.ParseInto does.
    return chart, namespace, merge(values, helm_python.parse_set_string(",".join(sets)))


def tor_defines() -> dict[str, str]:
    return dict(re.findall(r"^define (\w+) = (.+);$", (KIND / "tor-bird.conf").read_text(), re.MULTILINE))


def test_the_guide_uses_files_of_the_repo_and_every_kind_file_is_in_it() -> None:
    mentioned = set(re.findall(r"deploy/kind/[\w.-]+", guide()))
    assert {p for p in mentioned if not (REPO / p).is_file()} == set()
    assert {str(p.relative_to(REPO)) for p in KIND.iterdir()} <= mentioned
    chart, _, _ = helm_install()
    assert (REPO / chart).resolve() == CHART


def test_the_guides_shell_blocks_and_python_parse_and_the_tor_commands_agree() -> None:
    for block in re.findall(r"```sh\n(.*?)```", guide(), re.DOTALL):
        done = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True, timeout=10)
        assert done.returncode == 0, f"{done.stderr}\n{block}"
    client = guide_command("docker", "exec", "flock-tor", "python3", "-c")
    compile(client[5], "the guide's client", "exec")

    run = guide_command("docker", "run")
    volume = run[run.index("-v") + 1].split(":")
    assert volume[0] == "$PWD/deploy/kind/tor-bird.conf"  # shlex leaves $PWD: the checkout's top
    bird = run[run.index("flock:0.1.0") + 1:]
    assert bird[0] == "bird" and bird[bird.index("-c") + 1] == volume[1]
    socket = bird[bird.index("-s") + 1]
    birdcs = [c for c in guide_commands() if c[:4] == ["docker", "exec", "flock-tor", "birdc"]]
    assert birdcs and all(c[4:6] == ["-s", socket] for c in birdcs)


def test_the_kind_cluster_has_no_default_cni_and_pod_ranges_of_both_families() -> None:
    cluster = yaml.safe_load((KIND / "cluster.yaml").read_text())
    assert (cluster["kind"], cluster["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    networking = cluster["networking"]
    assert networking["disableDefaultCNI"] is True and networking["ipFamily"] == "dual"
    pods = [ipaddress.ip_network(n) for n in networking["podSubnet"].split(",")]
    assert sorted(n.version for n in pods) == [4, 6]
    assert sorted(node["role"] for node in cluster["nodes"]) == ["control-plane", "worker"]
    # The guide's names follow from the cluster's: kind load --name, docker exec <node>.
    assert guide_command("kind", "load", "docker-image")[-2:] == ["--name", cluster["name"]]
    assert f"docker exec {cluster['name']}-worker " in guide()


def test_the_guides_helm_install_lints_and_renders_a_config_the_agent_accepts(tmp_path: pathlib.Path) -> None:
    chart, namespace, values = helm_install()
    report = helm_python.lint(REPO / chart, values, namespace=namespace)
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == [], report
    rendered = render(values, namespace=namespace)
    for manifest in rendered.manifests:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)

    # The image the chart runs is the one the guide loads onto the nodes, never pulled.
    agent = rendered.container("agent")
    assert agent["image"] == guide_command("kind", "load", "docker-image")[3]
    assert agent["imagePullPolicy"] == "Never"

    done, written = run_render_config(rendered, tmp_path, host_ips="172.18.0.3,fc00:f853:ccd:e793::3",
                                      node="flock-worker")
    assert done.returncode == 0, done.stderr
    config = load_config(written, environ={"NODE_NAME": "flock-worker"})
    assert [(str(p.address), p.asn) for p in config.bird.peers] == [
        (SHELL_VARIABLES["TOR_V4"], 65000), (SHELL_VARIABLES["TOR_V6"], 65000)]
    assert str(config.bird.router_id) == "172.18.0.3"


def test_the_web_deployment_is_valid_and_its_anycast_ips_are_in_the_kind_pools() -> None:
    web = yaml.safe_load((KIND / "web.yaml").read_text())
    kubernetes_validate.validate(web, KUBERNETES_VERSION, strict=True)
    _, _, values = helm_install()
    pools = parse_config({"nodeName": "n", "anycastPools": values["anycastPools"],
                          "bird": {"routerId": "192.0.2.2", "asn": 64512}}, environ={}).anycast_pools
    parsed = parse_anycast(web["spec"]["template"]["metadata"]["annotations"]["flock.io/anycast"])
    assert parsed.errors == () and sorted(a.version for a in parsed.addresses) == [4, 6]
    assert all(in_pools(a, pools) for a in parsed.addresses)
    for address in parsed.addresses:  # the addresses the guide looks at and sends to
        assert str(address) in guide()


def test_the_tor_admits_the_values_pools_and_the_clusters_pod_ranges_from_the_nodes_as() -> None:
    defines = tor_defines()
    _, _, values = helm_install()
    cluster = yaml.safe_load((KIND / "cluster.yaml").read_text())

    def prefix_set(name: str) -> tuple[str, str]:
        match = re.fullmatch(r"\[ (\S+)\{(\d+),(\d+)\} \]", defines[name])
        assert match, defines[name]
        return match[1], match[3]

    pools = sorted(pool["cidr"] for pool in values["anycastPools"])
    assert sorted(prefix_set(n)[0] for n in ("ANYCAST_V4", "ANYCAST_V6")) == pools
    assert [prefix_set(n)[1] for n in ("ANYCAST_V4", "ANYCAST_V6")] == ["32", "128"]  # host routes only
    assert sorted(prefix_set(n)[0] for n in ("PODS_V4", "PODS_V6")) == sorted(
        cluster["networking"]["podSubnet"].split(","))

    tor = (KIND / "tor-bird.conf").read_text()
    assert set(re.findall(r"neighbor range \w+ as (\d+);", tor)) == {str(values["bird"]["asn"])}
    assert set(re.findall(r"local as (\d+);", tor)) == {str(p["asn"]) for p in values["bird"]["peers"]}
    # docker's default address pools, and kind's IPv6 (a ULA), inside the ranges it listens to.
    kind_ranges = [ipaddress.ip_network(defines[n]) for n in ("KIND_V4_A", "KIND_V4_B", "KIND_V6")]
    for text in ("172.17.0.0/16", "172.31.0.0/16", "192.168.0.0/20", "fc00:f853:ccd:e793::/64"):
        network = ipaddress.ip_network(text)
        assert any(network.network_address in r and network.broadcast_address in r for r in kind_ranges), text


# ---------------------------------------------------------------------------
# The ToR config, running, against two flock nodes
# ---------------------------------------------------------------------------

# kind's docker ranges and pod ranges replaced by documentation ranges (the tests' only
# addresses): the links of tests/support/birdlab (192.0.2.0/25, 2001:db8:ffff::/48) and
# pod CIDRs in 203.0.113.0/24 and 2001:db8:200::/48. The anycast pools already are
# documentation ranges.
LAB_DEFINES = {
    "KIND_V4_A": "192.0.2.0/25",
    "KIND_V4_B": "192.0.2.128/25",
    "KIND_V6": "2001:db8:ffff::/48",
    "PODS_V4": "[ 203.0.113.0/24{24,28} ]",
    "PODS_V6": "[ 2001:db8:200::/48{48,80} ]",
}
NODES = {  # link index: (pod CIDRs, a local replica's eth0 address in each)
    0: (("203.0.113.0/26", "2001:db8:200::/64"), ("203.0.113.11", "2001:db8:200::11")),
    1: (("203.0.113.64/26", "2001:db8:200:1::/64"), ("203.0.113.75", "2001:db8:200:1::11")),
}
ANYCAST = ("198.51.100.10", "2001:db8:100::10")


def lab_tor_config() -> str:
    text = (KIND / "tor-bird.conf").read_text()
    for name, value in LAB_DEFINES.items():
        text, count = re.subn(rf"^define {name} = .+;$", f"define {name} = {value};", text, flags=re.MULTILINE)
        assert count == 1, name
    return text


def tor_nexthops(tor: str, address: str) -> list[str]:
    family = "-6" if ":" in address else "-4"
    routes = json.loads(sh("ip", family, "-j", "route", "show", address, netns=tor) or "[]")
    if not routes:
        return []
    return sorted(hop.get("gateway", "") for hop in routes[0].get("nexthops", [routes[0]]))


@pytest.mark.bird
@pytest.mark.slow
def test_the_kind_tor_routes_an_anycast_ip_over_both_flock_nodes(make_netns: Any, birds: birdlab.Birds) -> None:
    _, _, values = helm_install()
    tor = make_netns("tor")
    tor_bird = birds.start(tor, lab_tor_config())
    for index, (pod_cidrs, replicas) in NODES.items():
        node = make_netns(f"node{index}")
        wire = birdlab.link(tor, node, index)
        # The pods' side: one veth standing for the replicas' veths.
        sh("ip", "link", "add", "pods", "type", "veth", "peer", "name", "pods-peer", netns=node)
        sh("ip", "link", "set", "pods-peer", "up", netns=node)
        for cidr in pod_cidrs:
            network = ipaddress.ip_network(cidr)
            sh("ip", "addr", "add", f"{next(network.hosts())}/{network.prefixlen}", "dev", "pods",
               *(["nodad"] if network.version == 6 else []), netns=node)
        sh("ip", "link", "set", "pods", "up", netns=node)
        config = parse_config({
            "nodeName": f"node{index}",
            "anycastPools": values["anycastPools"],
            "podCIDRs": list(pod_cidrs),
            "bird": {"routerId": str(wire.b_v4.ip), "asn": values["bird"]["asn"],
                     "peers": [{"address": str(wire.a_v4.ip), "asn": 65000},
                               {"address": str(wire.a_v6.ip), "asn": 65000}]},
        }, environ={})
        pods = [ipaddress.ip_network(c) for c in pod_cidrs]
        birds.start(node, render_bird_conf(bird_view(config=config, pod_cidrs=pods)))
        for anycast, replica in zip(ANYCAST, replicas, strict=True):  # as flock routes a local replica
            family = "-6" if ":" in anycast else "-4"
            sh("ip", family, "route", "add", anycast, "proto", str(config.route_protocol), "via", replica,
               "dev", "pods", netns=node)

    def over_both_nodes() -> bool:
        return all(len(tor_nexthops(tor, a)) == 2 for a in ANYCAST)

    birdlab.wait_for(over_both_nodes, timeout=60, what="the ToR's ECMP routes over both nodes\n"
                     + tor_bird.birdc("show", "protocols") + tor_bird.birdc("show", "route"))
    assert tor_nexthops(tor, ANYCAST[0]) == ["192.0.2.2", "192.0.2.6"]
    assert set(NODES[0][0] + NODES[1][0]) <= birdlab.kernel_prefixes(tor, proto="bird")
