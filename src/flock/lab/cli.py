"""``flock`` command line: ``flock lab up|run|down``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pathlib
import sys

from flock.core.eligibility import READY_AND_NOT_TERMINATING, READY_ONLY


def _options(args: argparse.Namespace, eligibility: str) -> object:
    from flock.lab.scenario import Options

    return Options(run_dir=args.run_dir, nodes=args.nodes, replicas=args.replicas, rate=args.rate,
                   grace=args.grace, detection=args.detection, eligibility=eligibility)


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
    run.add_argument("--compare", action="store_true", help="run flock's rule and the ready-only rule back to back")
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

    rules = [READY_AND_NOT_TERMINATING, READY_ONLY] if args.compare else [args.eligibility]
    results = {}
    for rule in rules:
        print(f"flock lab: running the rolling restart with the {rule} rule ...", file=sys.stderr, flush=True)
        results[rule] = asyncio.run(scenario.rolling_restart(_options(args, rule)))  # type: ignore[arg-type]
        print(report.render(results[rule]))
        print()
    figures: dict[str, object] = {"runs": results}
    if args.compare:
        print(report.render_compare(results[READY_AND_NOT_TERMINATING], results[READY_ONLY]))
        figures["comparison"] = report.compare(results[READY_AND_NOT_TERMINATING], results[READY_ONLY])
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
