"""flock-cni exec'd as a runtime does, against a running agent in a node netns (kmock API)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import subprocess

import pytest

from tests.cni.conftest import CniNode
from tests.support import birdlab
from tests.support.agent import eventually
from tests.support.apiserver import pod_manifest
from tests.support.netns import sh

pytestmark = [pytest.mark.netns, pytest.mark.bird, pytest.mark.kopf, pytest.mark.slow]

ANY_SHARED = "198.51.100.10 2001:db8:100::10"


def addresses(netns: str, dev: str) -> set[str]:
    shown = json.loads(sh("ip", "-j", "addr", "show", "dev", dev, netns=netns))
    return {f"{a['local']}/{a['prefixlen']}" for link in shown for a in link["addr_info"] if a["scope"] != "link"}


def default_gateways(netns: str) -> set[str]:
    found = set()
    for family in ("-4", "-6"):
        for route in json.loads(sh("ip", family, "-j", "route", "show", "default", netns=netns) or "[]"):
            found.add(f"{route['gateway']} dev {route['dev']}")
    return found


def node_anycast(netns: str, prefix: str) -> list[tuple[str, str]]:
    family = "-6" if ":" in prefix else "-4"
    shown = json.loads(sh("ip", family, "-j", "route", "show", prefix, "proto", "201", netns=netns) or "[]")
    if not shown:
        return []
    route = shown[0]
    if "nexthops" in route:
        return sorted((h["gateway"], h["dev"]) for h in route["nexthops"])
    return [(route["gateway"], route["dev"])]


async def test_three_pods_get_networks_anycast_routes_and_real_traffic(cni_node: CniNode) -> None:
    node = cni_node
    specs = [("web-1", ANY_SHARED), ("web-2", ANY_SHARED), ("db-1", "198.51.100.20")]
    pods = {}
    for name, anycast in specs:
        created = await node.cluster.create_pod(pod_manifest(name, node="node-a", anycast=anycast))
        netns, path = node.pod_netns()
        result = await node.cni("ADD", f"ctr-{name}", path, pod=name, uid=created["metadata"]["uid"])
        assert result.code == 0, result.raw
        pods[name] = (netns, path, result.output)

    for name, anycast in specs:
        netns, path, out = pods[name]
        assert out["cniVersion"] == "1.0.0"
        host_if, pod_if = out["interfaces"]
        assert host_if["name"].startswith("flock") and len(host_if["name"]) == 13
        assert pod_if == {"name": "eth0", "mac": pod_if["mac"], "sandbox": path}
        ips = [ip["address"] for ip in out["ips"]]
        assert [ipaddress.ip_interface(ip).version for ip in ips] == [4, 6]
        assert all(ip["interface"] == 1 for ip in out["ips"])
        assert addresses(netns, "eth0") == set(ips)
        assert default_gateways(netns) == {"169.254.1.1 dev eth0", "fe80::1 dev eth0"}
        assert addresses(netns, "lo") >= {f"{a}/{32 if '.' in a else 128}" for a in anycast.split()}
        assert not any(a.startswith("198.51.100.") for a in addresses(netns, "eth0")), "anycast never on eth0"
        # The node side: the veth and the /32 + /128 routes to the pod.
        for ip in ips:
            routes = json.loads(sh("ip", "-j", "route", "show", ip.split("/")[0], netns=node.netns)
                                if ":" not in ip else
                                sh("ip", "-6", "-j", "route", "show", ip.split("/")[0], netns=node.netns))
            assert [r["dev"] for r in routes] == [host_if["name"]]
    all_ips = [ip["address"] for _, _, out in pods.values() for ip in out["ips"]]
    assert len(set(all_ips)) == 6

    assert node_anycast(node.netns, "198.51.100.10/32") == [], "not Ready yet: no anycast route"
    for name, _ in specs:
        await node.cluster.set_ready(name, True)
    await eventually(lambda: len(node_anycast(node.netns, "198.51.100.10/32")) == 2, within=20,
                     what="a multipath route for the shared anycast IP")
    await eventually(lambda: len(node_anycast(node.netns, "2001:db8:100::10/128")) == 2, within=20,
                     what="a multipath IPv6 route for the shared anycast IP")
    await eventually(lambda: len(node_anycast(node.netns, "198.51.100.20/32")) == 1, within=20,
                     what="a plain route for db-1's anycast IP")

    # Real traffic from the node: ping every pod address, TCP to the anycast IP in a pod.
    for ip in all_ips:
        address = ip.split("/")[0]
        sh("ping", "-c", "1", "-W", "2", address, netns=node.netns)
    db_netns = pods["db-1"][0]
    server = subprocess.Popen(["ip", "netns", "exec", db_netns, "python3", "-c",
                               "import socket\ns=socket.create_server(('198.51.100.20', 8080))\n"
                               "c,_=s.accept(); c.sendall(b'hello from db-1'); c.close()"])
    try:
        await asyncio.sleep(0.5)
        got = sh("python3", "-c", "import socket\nc=socket.create_connection(('198.51.100.20', 8080), timeout=5)\n"
                 "print(c.recv(100).decode())", netns=node.netns)
        assert got.strip() == "hello from db-1"
    finally:
        server.kill()
        server.wait()

    # DEL: everything goes, and the addresses are handed out again later.
    for name in pods:
        netns, path, _ = pods[name]
        assert (await node.cni("DEL", f"ctr-{name}", path, pod=name)).code == 0
        assert (await node.cni("DEL", f"ctr-{name}", path, pod=name)).code == 0, "a repeated DEL succeeds"
    assert "flock" not in sh("ip", "-br", "link", netns=node.netns)
    await eventually(lambda: node_anycast(node.netns, "198.51.100.10/32") == [], within=20,
                     what="the anycast routes go with the pods")
    given_again: set[str] = set()
    for i in range(4):
        _, path = node.pod_netns()
        result = await node.cni("ADD", f"again-{i}", path, pod=f"again-{i}")
        assert result.code == 0, result.raw
        given_again |= {ip["address"] for ip in result.output["ips"]}
    assert len(given_again) == 8
    assert birdlab.kernel_prefixes(node.netns, proto="201")  # the new pods' host routes
