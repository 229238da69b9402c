"""``flock-agent``: check the config once, then run the agent's kopf operator on uvloop.

``flock-agent --config FILE`` validates the config and the host, reads the BGP password
files (one error line and exit 2 if bad) and hands the config to the operator through
kopf's memo; ``--check-config`` checks the file only (not the password files);
``--version`` prints the installed package's version. The same handlers also run as
``kopf run --standalone handlers/agent.py`` with ``FLOCK_CONFIG=FILE`` (:mod:`flock.operator`).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys

import kopf

from flock.adapters.configfile import check_host, load_config, read_passwords
from flock.errors import FlockError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flock-agent", description="flock's node agent")
    parser.add_argument("--version", action="version", version=f"%(prog)s {importlib.metadata.version('flock')}")
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    parser.add_argument("--check-config", action="store_true",
                        help="only check the config file (not this host), print one line, and exit")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        if args.check_config:
            print(f"flock-agent: {args.config}: config ok (node {config.node_name})")
            return 0
        check_host(config)  # fail fast, with one line, before kopf starts
        config = read_passwords(config)  # BGP passwords: read once, here (not by --check-config)
    except FlockError as exc:
        print(f"flock-agent: {exc}", file=sys.stderr)
        return 2

    import uvloop

    from flock.operator import registry  # registers the kopf handlers

    kopf.configure(debug=args.verbose, verbose=args.verbose)
    uvloop.run(kopf.operator(registry=registry, standalone=True, clusterwide=True,
                             memo=kopf.Memo(config=config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
