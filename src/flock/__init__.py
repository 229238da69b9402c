"""flock: Kubernetes pod networking for BGP bare-metal clusters, with anycast pods."""

__version__ = "0.1.0"
