"""flock-cni under load, crashes and bad input; and a reference plugin chained after it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest

from tests.support.agent import eventually
from tests.support.apiserver import pod_manifest
from tests.support.cni import ANY_SHARED, CniNode, node_veths
from tests.support.netlink_monitor import watch_routes
from tests.support.netns import sh
from tests.support.routes import next_hops

pytestmark = [pytest.mark.netns, pytest.mark.bird, pytest.mark.kopf, pytest.mark.slow]


async def test_a_hundred_adds_never_give_an_address_twice(cni_node: CniNode) -> None:
    given: list[str] = []
    for i in range(100):
        _, path = cni_node.pod_netns()
        result = await cni_node.cni("ADD", f"bulk-{i:03d}", path, pod=f"bulk-{i}")
        assert result.code == 0, result.raw
        given += [ip["address"] for ip in result.output["ips"]]
    assert len(given) == 200 and len(set(given)) == 200
    assert len(node_veths(cni_node.netns)) == 100


async def test_an_agent_killed_during_an_add_leaks_and_doubles_nothing(cni_node: CniNode) -> None:
    node = cni_node
    state = node.state_dir
    paths = [node.pod_netns()[1] for _ in range(30)]
    outcomes: dict[int, int] = {}

    # Kill the agent the moment a pending record (an ADD in progress) is on disk.
    killed = threading.Event()

    def killer() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed.is_set():
            for record in (state / "allocations").glob("*.json"):
                try:
                    if '"pending"' in record.read_text():
                        node.agent.kill()
                        killed.set()
                        return
                except FileNotFoundError:
                    pass
            time.sleep(0.0005)

    watcher = threading.Thread(target=killer)
    watcher.start()
    for i, path in enumerate(paths):
        outcomes[i] = (await node.cni("ADD", f"crash-{i:02d}", path, pod=f"crash-{i}")).code
        if killed.is_set():
            break
    watcher.join()
    assert killed.is_set(), "never caught an ADD in progress"
    assert any(code != 0 for code in outcomes.values()), "the interrupted ADD must fail"

    # Restarted on the same state: the unfinished ADD is released, nothing else changes.
    node.agent.start()
    await eventually(lambda: not any(r["state"] == "pending" for r in node.records()), within=30,
                     what="the pending record is released at start-up")
    await eventually(lambda: len(node_veths(node.netns)) == len(node.records()), within=30,
                     what="no veth without a record (no leak)")
    # The runtime retries every ADD that failed; all succeed and no address is doubled.
    for i, code in outcomes.items():
        if code != 0:
            retried = await node.cni("ADD", f"crash-{i:02d}", paths[i], pod=f"crash-{i}")
            assert retried.code == 0, retried.raw
    addresses = [ip for r in node.records() for ip in r["podIPs"]]
    assert len(addresses) == len(set(addresses)) == 2 * len(outcomes)
    assert len(node_veths(node.netns)) == len(outcomes)


async def test_bad_input_gets_spec_errors_and_other_pods_are_unaffected(cni_node: CniNode) -> None:
    node = cni_node
    created = await node.cluster.create_pod(pod_manifest("good", node="node-a", anycast="198.51.100.10"))
    _, good_path = node.pod_netns()
    good = await node.cni("ADD", "good", good_path, pod="good", uid=created["metadata"]["uid"])
    assert good.code == 0, good.raw

    _, path = node.pod_netns()
    cases: list[tuple[dict[str, Any] | str | None, dict[str, str | None] | None, int]] = [
        ("{this is not json", None, 6),  # (config, environment, CNI error code)
        ({**node.net_config, "cniVersion": "0.3.1"}, None, 1),
        (None, {"CNI_NETNS": ""}, 4),
        (None, {"CNI_NETNS": None}, 4),  # not set at all
        (None, {"CNI_NETNS": "/var/run/netns/flk-no-such-netns"}, 4),
    ]
    for config, env, code in cases:
        result = await node.cni("ADD", "bad", path, pod="bad", config=config, extra_env=env)
        assert result.code != 0 and result.output["code"] == code, (config, env, result.raw)
        assert result.output["msg"], "every error says what is wrong"
    assert "bad" not in "".join(p.name for p in (node.state_dir / "allocations").iterdir())

    # An anycast IP outside the pools: the pod gets its network, not that IP, and an Event.
    created = await node.cluster.create_pod(pod_manifest("greedy", node="node-a",
                                                         anycast="203.0.113.200, 198.51.100.11"))
    greedy_netns, greedy_path = node.pod_netns()
    greedy = await node.cni("ADD", "greedy", greedy_path, pod="greedy", uid=created["metadata"]["uid"])
    assert greedy.code == 0, greedy.raw
    lo = sh("ip", "-br", "addr", "show", "dev", "lo", netns=greedy_netns)
    assert "198.51.100.11/32" in lo and "203.0.113.200" not in lo
    await eventually(lambda: any("203.0.113.200 is outside the anycast pools" in e["message"]
                                 for e in node.cluster.events("AnycastRejected")),
                     within=10, what="an AnycastRejected Event naming the address")

    check = await node.cni("CHECK", "good", good_path, pod="good")
    assert check.code == 0, check.raw
    assert node.agent.alive()


async def test_check_reports_what_differs(cni_node: CniNode) -> None:
    node = cni_node
    netns, path = node.pod_netns()
    added = await node.cni("ADD", "checked", path, pod="checked")
    v4 = added.output["ips"][0]["address"]
    assert (await node.cni("CHECK", "checked", path, pod="checked")).code == 0
    sh("ip", "addr", "del", v4, "dev", "eth0", netns=netns)
    check = await node.cni("CHECK", "checked", path, pod="checked")
    assert check.code != 0 and check.output["code"] == 100
    assert v4.split("/")[0] in check.output["msg"]
    unknown = await node.cni("CHECK", "never-added", path, pod="x")
    assert unknown.output["code"] == 3


async def test_a_reference_plugin_chained_after_flock_accepts_its_result(cni_node: CniNode) -> None:
    """As a runtime runs a conflist: flock ADD, then tuning ADD with flock's result as prevResult;
    DEL in reverse order. Debian's tuning plugin parses prevResult strictly (CNI 1.0.0 types)."""
    node = cni_node
    netns, path = node.pod_netns()
    tuning = {"cniVersion": "1.0.0", "name": node.conflist["name"], "type": "tuning",
              "sysctl": {"net.core.somaxconn": "777"}}
    flock = await node.cni("ADD", "chained", path, pod="chained")
    assert flock.code == 0, flock.raw
    chained = await node.exec_plugin("tuning", "ADD", "chained", path,
                                     config={**tuning, "prevResult": flock.output})
    assert chained.code == 0, chained.raw
    assert chained.output["ips"] == flock.output["ips"], "tuning passes flock's result on"
    assert sh("cat", "/proc/sys/net/core/somaxconn", netns=netns).strip() == "777"

    undone = await node.exec_plugin("tuning", "DEL", "chained", path, config={**tuning, "prevResult": chained.output})
    assert undone.code == 0, undone.raw
    assert (await node.cni("DEL", "chained", path, pod="chained")).code == 0
    assert node_veths(node.netns) == set()
    await asyncio.sleep(0)


# Two container ids whose SHA-256 share their first 8 hex digits (flockb640bc06).
COLLIDING = ("61a18d75421cf0ad0cadd99639dec16c87eaeb7b563286cd3720bedbf25366e3",
             "d6a097977506a1fe8bac88b21c8fa0f1720bb1ab90789763fdb4aa803843730a")


async def test_containers_whose_veth_names_collide_keep_their_own_networks(cni_node: CniNode) -> None:
    node = cni_node
    (_, path_a), (_, path_b) = node.pod_netns(), node.pod_netns()
    a = await node.cni("ADD", COLLIDING[0], path_a, pod="a")
    b = await node.cni("ADD", COLLIDING[1], path_b, pod="b")
    assert a.code == 0 and b.code == 0, a.raw + b.raw
    veth_a, veth_b = a.output["interfaces"][0]["name"], b.output["interfaces"][0]["name"]
    assert veth_a == "flockb640bc06" and veth_b != veth_a
    assert (await node.cni("CHECK", COLLIDING[0], path_a, pod="a")).code == 0, "B's ADD broke A"

    assert (await node.cni("DEL", COLLIDING[1], path_b, pod="b")).code == 0
    assert (await node.cni("DEL", COLLIDING[1], "", pod="b")).code == 0  # containerd's second DEL
    assert (await node.cni("CHECK", COLLIDING[0], path_a, pod="a")).code == 0, "B's DELs broke A"
    assert node_veths(node.netns) == {veth_a}


async def test_a_del_cut_short_by_a_crash_is_finished_without_dropping_the_shared_route(cni_node: CniNode) -> None:
    """The agent died after marking web-1 'releasing' (a DEL in progress), and comes back
    while the API is slow: web-1's veth must stay until a pass has taken it out of the
    multipath route, or the kernel drops the IPv4 route of web-2 with it."""
    node = cni_node
    pods = {}
    for name in ("web-1", "web-2"):
        created = await node.cluster.create_pod(pod_manifest(name, node="node-a", anycast=ANY_SHARED, ready=True))
        _, path = node.pod_netns()
        result = await node.cni("ADD", f"ctr-{name}", path, pod=name, uid=created["metadata"]["uid"])
        assert result.code == 0, result.raw
        pods[name] = (path, result.output)
    await eventually(lambda: len(next_hops(node.netns, "198.51.100.10/32")) == 2, within=20,
                     what="a route with two next hops")
    web1_veth = pods["web-1"][1]["interfaces"][0]["name"]
    web2_hop = [h for h in next_hops(node.netns, "198.51.100.10/32") if h[1] != web1_veth]

    node.agent.stop()
    record = next(p for p in (node.state_dir / "allocations").glob("*.json")
                  if json.loads(p.read_text())["containerID"] == "ctr-web-1")
    record.write_text(record.read_text().replace('"committed"', '"releasing"'))

    api_open = asyncio.Event()

    async def hold() -> None:
        await api_open.wait()  # then the emulator answers

    node.cluster.api["get /api/v1/pods"] << hold
    with watch_routes(node.netns, links=True) as seen:
        node.agent.start()
        # A DEL before the agent's passes run cannot take web-1 out of the route yet.
        deadline = time.monotonic() + 30
        while True:
            retry = await node.cni("DEL", "ctr-web-1", pods["web-1"][0], pod="web-1")
            if "must leave its anycast route" in retry.output.get("msg", "") or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert retry.code != 0 and retry.output["code"] == 11, retry.raw
        await node.agent.wait_for_passes(2)  # passes that hold the routes while the API is slow
        assert web1_veth in node_veths(node.netns) and len(next_hops(node.netns, "198.51.100.10/32")) == 2

        api_open.set()
        await eventually(lambda: web1_veth not in node_veths(node.netns), within=30,
                         what="the restarted agent finishes the DEL")
        assert next_hops(node.netns, "198.51.100.10/32") == web2_hop
    order = [(c.kind, c.prefix) for c in seen.seen if c.prefix in ("198.51.100.10/32", web1_veth)]
    assert order == [("new", "198.51.100.10/32"), ("link-del", web1_veth)], order
    assert (await node.cni("DEL", "ctr-web-1", pods["web-1"][0], pod="web-1")).code == 0
    assert not any(r["containerID"] == "ctr-web-1" for r in node.records())
