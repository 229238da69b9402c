"""``flock`` command line: ``flock lab up|run|down``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pathlib
import sys
from typing import Any

from flock.core.eligibility import READY_AND_NOT_TERMINATING, READY_ONLY

SCENARIOS = {"rolling": "the rolling restart", "single-replica": "single-replica",
             "node-failure": "node-b's failure"}
BFD = {"on": True, "off": False, None: None}


def _options(args: argparse.Namespace, eligibility: str, datapath: dict[str, Any] | None = None,
             terminating: str | None = None, bfd: bool | None = None) -> object:
    from flock.lab.scenario import Options

    scenario = getattr(args, "scenario", "rolling")
    single = scenario == "single-replica"
    return Options(run_dir=args.run_dir, nodes=args.nodes, replicas=1 if single else args.replicas, rate=args.rate,
                   grace=args.grace, detection=args.detection, eligibility=eligibility,
                   long_lived=getattr(args, "long_lived", 0), datapath=datapath,
                   scenario=scenario, startup=getattr(args, "startup", 4.0),
                   terminating=terminating, bfd=bfd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flock", description="flock: anycast pods on BGP fabrics")
    commands = parser.add_subparsers(dest="command", required=True)
    lab = commands.add_parser("lab", help="a flock fabric in network namespaces on this machine (root)")
    actions = lab.add_subparsers(dest="action", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--run-dir", type=pathlib.Path, default=pathlib.Path("/run/flock-lab"))
        p.add_argument("--nodes", type=int, default=2, choices=range(1, 5), metavar="N")
        p.add_argument("--replicas", type=int, default=3)
        p.add_argument("--rate", type=float, default=200.0, help="new connections/s per address family")
        p.add_argument("--grace", type=float, default=2.0, help="preStop grace, s (server still serving)")
        p.add_argument("--detection", type=float, default=1.0, help="kubelet's delay to mark NotReady, s")
        p.add_argument("--eligibility", choices=(READY_AND_NOT_TERMINATING, READY_ONLY),
                       default=READY_AND_NOT_TERMINATING)
        p.add_argument("-v", "--verbose", action="store_true")

    up = actions.add_parser("up", help="bring the lab up and leave it running")
    common(up)
    run = actions.add_parser("run", help="up, a rolling restart under load, a report, down")
    common(run)
    run.add_argument("--compare", action="store_true",
                     help="run side by side: ready-only; flock's rule on plain multipath (no pinning); "
                          "flock's rule with connection pinning (when the agent has it)")
    run.add_argument("--datapath", choices=("default", "plain", "pinned"), default="default",
                     help="without --compare: the agents' datapath (default: their own)")
    run.add_argument("--long-lived", type=int, default=60, metavar="M",
                     help="long-lived connections kept open through the restart, half IPv4, half IPv6 (0: none)")
    run.add_argument("--scenario", choices=tuple(SCENARIOS), default="rolling",
                     help="rolling: every replica restarted in turn; single-replica: a one-replica Deployment's "
                          "pod deleted, its replacement Ready --startup s later on another node "
                          "(--compare: last-resort vs withdraw); node-failure: node-b hangs (processes frozen, "
                          "uplink dropping every packet), the ToR runs BFD (--compare: the agents' BFD on vs off)")
    run.add_argument("--bfd", choices=("on", "off"), default=None,
                     help="without --compare: the agents' bird.bfd.enabled (default: their own, on)")
    run.add_argument("--startup", type=float, default=4.0,
                     help="single-replica: the replacement is Ready this long after the deletion, s")
    run.add_argument("--terminating", choices=("last-resort", "withdraw"), default=None,
                     help="the pods' flock.io/anycast-terminating (default: not set, the agent's default)")
    run.add_argument("--json", type=pathlib.Path, help="write the figures to this file")
    down = actions.add_parser("down", help="remove every namespace and process of the lab")
    down.add_argument("--run-dir", type=pathlib.Path, default=pathlib.Path("/run/flock-lab"))
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    if os.geteuid() != 0:
        print("flock lab: run as root (it creates network namespaces)", file=sys.stderr)
        return 2

    from flock.lab import report, scenario, topology

    if args.action == "down":
        removed = topology.teardown(args.run_dir)
        print(f"flock lab down: removed {len(removed)} namespaces and processes" if removed
              else "flock lab down: nothing to remove")
        return 0
    if topology.lab_id(args.run_dir) or (args.run_dir / "state.json").exists():
        print(f"flock lab: a lab is already up (run `flock lab down --run-dir {args.run_dir}` first)",
              file=sys.stderr)
        return 1
    if args.action == "up":
        async def bring_up() -> None:
            fabric, _, session, pods = await scenario.up(_options(args, args.eligibility))  # type: ignore[arg-type]
            await session.close()
            print(f"flock lab is up: {len(fabric.nodes)} nodes, {len(pods)} pods; run dir {fabric.run_dir}")
            print(f"  try: ip netns exec {fabric.names.client} curl -s http://{topology.ANYCAST[0]}/")
            print(f"       ip -n {fabric.names.tor} route show {topology.ANYCAST[0]}")
            print(f"       birdc -s {fabric.run_dir}/node-a/bird.ctl show route")
            print("  then: flock lab down")
        try:
            asyncio.run(bring_up())
        except BaseException:
            topology.teardown(args.run_dir)
            raise
        return 0

    if args.scenario == "node-failure" and args.nodes < 2:
        print("flock lab: --scenario node-failure needs --nodes 2 or more (node-b fails)", file=sys.stderr)
        return 2
    try:
        runs, note = scenario.variants(args.compare, args.eligibility, args.datapath, scenario=args.scenario,
                                       terminating=args.terminating, bfd=BFD[args.bfd])
    except ValueError as exc:
        print(f"flock lab: {exc}", file=sys.stderr)
        return 2
    results = {}
    for variant in runs:
        print(f"flock lab: running {SCENARIOS[args.scenario]}: {variant.title} ...", file=sys.stderr, flush=True)
        results[variant.key] = asyncio.run(scenario.rolling_restart(
            _options(args, variant.eligibility, variant.datapath, variant.terminating,
                     variant.bfd)))  # type: ignore[arg-type]
        results[variant.key]["title"] = variant.title
        print(report.render(results[variant.key]))
        print()
    figures: dict[str, object] = {"runs": results, "columns": [v.key for v in runs], "note": note}
    if args.compare:
        columns = [(v.title, results[v.key]) for v in runs]
        print(report.render_compare(columns, note))
        figures["comparison"] = report.compare([(v.key, results[v.key]) for v in runs])
    elif note and args.datapath != "default":
        print(note)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
