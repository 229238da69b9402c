"""What a request to the emulated API costs as a run goes on: kmock 0.8 beside flock's Emulator.

Both serve on 127.0.0.1 in this process, with the lab's resources and 20 pods on two nodes,
and two agents' pod watches open (``fieldSelector=spec.nodeName=node-a`` / ``node-b``),
read by this process as kopf would. Then, against each:

  * PATCH time at the start: the median of 50 sequential merge PATCHes (Ready flips) of
    fresh emulators;
  * PATCH time after 1,000 requests: 1,000 PATCHes served, then the median of 50 more;
  * a burst of 250 PATCHes sent at once: wall time until the last one is answered;
  * the events each watch received, and how many of them were another node's pods.

kmock 0.8 decides which reaction serves a request by iterating every request it has
served, so its cost grows with the run; the Emulator holds only requests in flight.

    .venv/bin/python bench/apiserver.py [--history 1000] [--burst 250]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import aiohttp
import kmock

from flock.lab.apiserver import Emulator, declare

NODES = {"node-a": ["203.0.113.0/26"], "node-b": ["203.0.113.64/26"]}
PODS = 20
MERGE = {"Content-Type": "application/merge-patch+json"}


def pod(index: int) -> dict[str, Any]:
    node = "node-a" if index % 2 == 0 else "node-b"
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"web-{index}", "namespace": "default", "uid": f"uid-{index}",
                         "finalizers": ["bench/keep"]},
            "spec": {"nodeName": node, "containers": [{"name": "web", "image": "web"}]},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]}}


class Watch:
    def __init__(self, session: aiohttp.ClientSession, url: str, node: str) -> None:
        self.node, self.events, self.foreign = node, 0, 0
        self.task = asyncio.create_task(self._run(session, url))

    async def _run(self, session: aiohttp.ClientSession, url: str) -> None:
        params = {"watch": "true", "fieldSelector": f"spec.nodeName={self.node}"}
        async with session.get(f"{url}/api/v1/pods", params=params, timeout=aiohttp.ClientTimeout()) as response:
            async for line in response.content:
                if line.strip():
                    self.events += 1
                    self.foreign += b'"nodeName": "' + self.node.encode() not in line \
                        and b'"nodeName":"' + self.node.encode() not in line


async def measure(cls: type[kmock.KubernetesEmulator], history: int, burst: int) -> dict[str, float]:
    async with cls() as api, kmock.Server(api) as server, aiohttp.ClientSession() as session:
        declare(api, NODES)
        url = str(server.url).rstrip("/")
        for i in range(PODS):
            async with session.post(f"{url}/api/v1/namespaces/default/pods", json=pod(i)) as response:
                assert response.status < 400, await response.text()
        watches = [Watch(session, url, node) for node in NODES]
        await asyncio.sleep(0.2)
        flips = 0

        async def patch() -> float:
            nonlocal flips
            flips += 1
            body = {"status": {"conditions": [{"type": "Ready", "status": "True" if flips % 2 else "False"}]}}
            started = time.perf_counter()
            async with session.patch(f"{url}/api/v1/namespaces/default/pods/web-{flips % PODS}",
                                     json=body, headers=MERGE) as response:
                await response.read()
                assert response.status < 400
            return time.perf_counter() - started

        start = statistics.median([await patch() for _ in range(50)])
        for _ in range(history - 50 - PODS):
            await patch()
        later = statistics.median([await patch() for _ in range(50)])
        started = time.perf_counter()
        await asyncio.gather(*(patch() for _ in range(burst)))
        took = time.perf_counter() - started
        await asyncio.sleep(0.5)
        for watch in watches:
            watch.task.cancel()
        return {"start": start, "later": later, "burst": took, "events": sum(w.events for w in watches),
                "foreign": sum(w.foreign for w in watches)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history", type=int, default=1000, help="requests served before the second figure")
    parser.add_argument("--burst", type=int, default=250)
    args = parser.parse_args()
    rows = {name: asyncio.run(measure(cls, args.history, args.burst))
            for name, cls in (("kmock 0.8", kmock.KubernetesEmulator), ("flock Emulator", Emulator))}
    print(f"{'':<34}{'kmock 0.8':>16}{'flock Emulator':>16}")
    lines = [("PATCH at the start (median)", "start", 1000, "ms"),
             (f"PATCH after {args.history} requests", "later", 1000, "ms"),
             (f"burst of {args.burst} PATCHes", "burst", 1, "s"),
             ("watch events (2 node watches)", "events", None, ""),
             ("  of another node's pods", "foreign", None, "")]
    for label, key, scale, unit in lines:
        cells = [f"{r[key] * scale:.1f} {unit}" if scale else f"{r[key]:.0f}" for r in rows.values()]
        print(f"{label:<34}{cells[0]:>16}{cells[1]:>16}")


if __name__ == "__main__":
    main()
