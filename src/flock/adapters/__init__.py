"""Adapters: the thin parts that touch netlink, files, birdc, procfs and the API server.
Each translates third-party errors into flock.errors once."""
