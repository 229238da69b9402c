"""The lab's Kubernetes API: kmock's emulator on 127.0.0.1, as a process of its own.

``python -m flock.lab.apiserver --port 6443 --node node-a=203.0.113.0/26,2001:db8:200::/64``
serves Namespaces, Nodes, Pods and Events to the agents (real kopf operators) and to the
lab's kubelet emulator. kmock's gaps that matter here: DELETE without finalizers removes
an object at once (the kubelet emulator models graceful deletion by patching
``deletionTimestamp`` itself); objects get no uid unless given one; a POST to
/api/v1/namespaces is not parsed, so namespaces and nodes are stored directly.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import uuid

import kmock


def declare(api: kmock.KubernetesEmulator, nodes: dict[str, list[str]]) -> None:
    for plural, kind, namespaced in (("namespaces", "Namespace", False), ("nodes", "Node", False),
                                     ("pods", "Pod", True), ("events", "Event", True)):
        api.resources[f"v1/{plural}"] = kmock.ResourceInfo(
            kind=kind, singular=kind.lower(), namespaced=namespaced,
            verbs={"get", "list", "watch", "create", "patch", "update", "delete"})
    api.objects["v1/namespaces", None, "default"] = {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}
    for name, cidrs in nodes.items():
        api.objects["v1/nodes", None, name] = {
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "uid": str(uuid.uuid4())},
            "spec": {"podCIDRs": cidrs}}


async def serve(port: int, nodes: dict[str, list[str]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with kmock.KubernetesEmulator() as api, kmock.Server(api, port=port):
        declare(api, nodes)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="flock-lab-apiserver")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lab", help="the lab's run dir (marks the process as the lab's, for `flock lab down`)")
    parser.add_argument("--node", action="append", default=[], help="NAME=CIDR[,CIDR]")
    args = parser.parse_args()
    nodes = {name: cidrs.split(",") for name, cidrs in (n.split("=", 1) for n in args.node)}
    asyncio.run(serve(args.port, nodes))


if __name__ == "__main__":
    main()
