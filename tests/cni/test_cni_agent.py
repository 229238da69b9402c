"""flock-cni exec'd as a runtime does, against a running agent in a node netns (kmock API)."""

from __future__ import annotations

import ipaddress
import json
import subprocess

import pytest

from flock.core.cnispec import NO_ADDRESS_LEFT
from tests.support.agent import eventually
from tests.support.apiserver import pod_manifest
from tests.support.cni import ANY_SHARED, CniNode, node_veths
from tests.support.netlink_monitor import watch_routes
from tests.support.netns import sh
from tests.support.routes import next_hops

pytestmark = [pytest.mark.netns, pytest.mark.bird, pytest.mark.kopf, pytest.mark.slow]

def addresses(netns: str, dev: str) -> set[str]:
    shown = json.loads(sh("ip", "-j", "addr", "show", "dev", dev, netns=netns))
    return {f"{a['local']}/{a['prefixlen']}" for link in shown for a in link["addr_info"] if a["scope"] != "link"}


def default_gateways(netns: str) -> set[str]:
    found = set()
    for family in ("-4", "-6"):
        for route in json.loads(sh("ip", family, "-j", "route", "show", "default", netns=netns) or "[]"):
            found.add(f"{route['gateway']} dev {route['dev']}")
    return found


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

    assert next_hops(node.netns, "198.51.100.10/32") == [], "not Ready yet: no anycast route"
    for name, _ in specs:
        await node.cluster.set_ready(name, True)
    await eventually(lambda: len(next_hops(node.netns, "198.51.100.10/32")) == 2, within=20,
                     what="a multipath route for the shared anycast IP")
    await eventually(lambda: len(next_hops(node.netns, "2001:db8:100::10/128")) == 2, within=20,
                     what="a multipath IPv6 route for the shared anycast IP")
    await eventually(lambda: len(next_hops(node.netns, "198.51.100.20/32")) == 1, within=20,
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
        await eventually(lambda: "198.51.100.20:8080" in sh("ss", "-Hltn", netns=db_netns), within=10,
                         what="the server in db-1 listening")
        got = sh("python3", "-c", "import socket\nc=socket.create_connection(('198.51.100.20', 8080), timeout=5)\n"
                 "print(c.recv(100).decode())", netns=node.netns)
        assert got.strip() == "hello from db-1"
    finally:
        server.kill()
        server.wait()

    # DEL of web-1 while it is still Ready (no graceful termination first, e.g. a sandbox
    # torn down after a crash): web-2 keeps the shared route all along. Deleting a veth that
    # is one next hop of an IPv4 multipath route makes the kernel drop the whole route.
    web1_v4 = pods["web-1"][2]["ips"][0]["address"].split("/")[0]
    web2_hop = [hop for hop in next_hops(node.netns, "198.51.100.10/32") if hop[0] != web1_v4]
    web1_veth = pods["web-1"][2]["interfaces"][0]["name"]
    with watch_routes(node.netns, links=True) as seen:
        assert (await node.cni("DEL", "ctr-web-1", pods["web-1"][1], pod="web-1")).code == 0
        assert next_hops(node.netns, "198.51.100.10/32") == web2_hop
    # The kernel announces no RTM_DELROUTE for the routes a deleted device takes with it:
    # the order of the route's replacement and the veth's deletion tells.
    order = [(c.kind, c.prefix) for c in seen.seen if c.prefix in ("198.51.100.10/32", web1_veth)]
    assert order == [("new", "198.51.100.10/32"), ("link-del", web1_veth)], \
        "web-1 must leave the shared route before its veth goes"
    assert len(next_hops(node.netns, "2001:db8:100::10/128")) == 1

    # DEL: everything goes.
    for name in pods:
        netns, path, _ = pods[name]
        assert (await node.cni("DEL", f"ctr-{name}", path, pod=name)).code == 0
        assert (await node.cni("DEL", f"ctr-{name}", path, pod=name)).code == 0, "a repeated DEL succeeds"
    assert "flock" not in sh("ip", "-br", "link", netns=node.netns)
    await eventually(lambda: next_hops(node.netns, "198.51.100.10/32") == [], within=20,
                     what="the anycast routes go with the pods")


@pytest.mark.parametrize("cni_node", [["203.0.113.0/29", "2001:db8:200::/64"]], indirect=True)
async def test_a_full_pod_cidr_says_so_and_freed_addresses_are_handed_out_again(cni_node: CniNode) -> None:
    # 203.0.113.0/29: .0, .1 (flock's) and .7 are reserved, so five pods fit.
    node = cni_node
    given: dict[str, list[str]] = {}
    for i in range(5):
        _, path = node.pod_netns()
        result = await node.cni("ADD", f"ctr-{i}", path, pod=f"pod-{i}")
        assert result.code == 0, result.raw
        given[f"ctr-{i}"] = [ip["address"] for ip in result.output["ips"]]
    assert sorted(ips[0] for ips in given.values()) == [f"203.0.113.{n}/32" for n in range(2, 7)]

    _, path = node.pod_netns()
    full = await node.cni("ADD", "ctr-late", path, pod="pod-late")
    assert full.code != 0 and full.output["code"] == NO_ADDRESS_LEFT, full.raw
    assert "no free IPv4 address left in 203.0.113.0/29" in full.output["msg"]
    assert len(node_veths(node.netns)) == 5, "the failed ADD left nothing behind"

    assert (await node.cni("DEL", "ctr-2", "", pod="pod-2")).code == 0
    again = await node.cni("ADD", "ctr-late", path, pod="pod-late")
    assert again.code == 0, again.raw
    assert again.output["ips"][0]["address"] == given["ctr-2"][0], "the freed address is handed out again"


async def test_a_node_without_python_or_path_runs_pods_through_the_static_shim(cni_node: CniNode) -> None:
    # What a kind, Talos or Flatcar node gives a CNI plugin: no interpreter to find. The
    # runtime execs <bin dir>/flock with the CNI_* variables only: no PATH at all here,
    # and the binary is a static ELF (tests/cni/test_shim.py), so nothing else is loaded.
    node = cni_node
    created = await node.cluster.create_pod(pod_manifest("bare-1", node="node-a", anycast="198.51.100.30",
                                                          ready=True))
    netns, path = node.pod_netns()
    result = await node.cni("ADD", "ctr-bare-1", path, pod="bare-1", uid=created["metadata"]["uid"],
                            extra_env={"PATH": None})
    assert result.code == 0, result.raw
    assert addresses(netns, "lo") >= {"198.51.100.30/32"}
    await eventually(lambda: len(next_hops(node.netns, "198.51.100.30/32")) == 1, within=15,
                     what="the pod routed")
    with open(node.bin_dir / "flock-cni", "rb") as binary:
        assert binary.read(4) == b"\x7fELF", "an executable, not a script for an interpreter"
    done = await node.cni("DEL", "ctr-bare-1", path, pod="bare-1", uid=created["metadata"]["uid"],
                          extra_env={"PATH": None})
    assert done.code == 0, done.raw
