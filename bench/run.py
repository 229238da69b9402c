"""Every benchmark, one after the other, each printing its figures beside the references
it measures in the same run.

    .venv/bin/python bench/run.py            # the sizes the README reports (several minutes)
    .venv/bin/python bench/run.py --quick    # smaller sizes, one round: a quick look

Needs root (network namespaces, BIRD). Each benchmark is its own script in bench/ and can
be run alone with more options (``--help``).
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent

BENCHES = [
    # (script, full arguments, quick arguments)
    ("passes.py", ["--sizes", "100,1000,10000", "--rounds", "3", "--repeats", "9"],
     ["--sizes", "100,1000", "--rounds", "1", "--repeats", "9"]),
    ("route_dump.py", ["--routes", "1000,10000"], ["--routes", "1000", "--rounds", "1"]),
    ("apiserver.py", [], ["--history", "300", "--burst", "100"]),
    ("cni_latency.py", ["--pods", "100"], ["--pods", "20"]),
    ("rss.py", [], ["--pods", "50", "--others", "1000"]),
    ("forwarding.py", [], ["--rounds", "2", "--seconds", "1", "--new-flows", "50000", "--memory-flows", "20000"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one round")
    args = parser.parse_args()
    failed = []
    for script, full, quick in BENCHES:
        print(f"\n=== bench/{script} {' '.join(quick if args.quick else full)}", flush=True)
        done = subprocess.run([sys.executable, str(HERE / script), *(quick if args.quick else full)], check=False)
        if done.returncode != 0:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
