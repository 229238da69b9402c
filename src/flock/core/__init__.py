"""The pure core: values and rules, data in and data out. No I/O: no netlink, files,
subprocesses, YAML, HTTP or Kubernetes client (an import-linter contract keeps it so)."""
