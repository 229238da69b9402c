"""Prometheus metrics of one agent (own registry, so several agents can share a process in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.passes = Counter("flock_reconcile_passes", "Reconcile passes run", ["trigger"],
                              registry=self.registry)
        self.pass_seconds = Histogram("flock_reconcile_pass_seconds", "Duration of one reconcile pass",
                                      registry=self.registry,
                                      buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                               0.25, 0.5, 1, 2.5, 5))
        self.route_edits = Counter("flock_route_edits", "Kernel route edits attempted", ["op"],
                                   registry=self.registry)
        self.route_errors = Counter("flock_route_errors", "Kernel route edits that failed",
                                    registry=self.registry)
        self.bird_reloads = Counter("flock_bird_reloads", "BIRD reconfigurations", ["result"],
                                    registry=self.registry)
        self.anycast_routes = Gauge("flock_anycast_routes", "Anycast host routes installed and advertised",
                                    registry=self.registry)
        self.withdrawn_routes = Gauge("flock_anycast_withdrawn_routes", "Anycast host routes withdrawn "
                                      "from BGP that still forward until their linger ends",
                                      registry=self.registry)
        self.anycast_nexthops = Gauge("flock_anycast_nexthops", "Next hops over all anycast routes",
                                      registry=self.registry)
        self.drift_repairs = Counter("flock_drift_repairs", "Routes repaired after a full kernel view",
                                     registry=self.registry)

        self.pinned_pods = Gauge("flock_pinned_pods", "Pods whose connections are pinned to them "
                                 "(connection pinning: conntrack mark -> per-pod table)", registry=self.registry)
        self.pinning_slots = Gauge("flock_pinning_slots", "Pods that can be pinned at once (datapath.markMask); "
                                   "0 when connection pinning is off", registry=self.registry)
        self.daisy_chain_nodes = Gauge(
            "flock_daisy_chain_nodes", "Nodes in the daisy chain's ring this node forwards along (0: off, or "
            "no ring: a single node, or this Node has no InternalIP)", registry=self.registry)
        self.daisy_chain_silent = Gauge(
            "flock_daisy_chain_silent_nodes", "Ring members this node's BFD saw up and now hears nothing from: "
            "left out of the daisy chain until they answer again", registry=self.registry)
        self.daisy_chain_packets = Counter(
            "flock_daisy_chain_packets", "Daisy chaining, by what: forwarded (mid-flow packets sent along the "
            "chain), reset (came along the chain and nobody owned them: a TCP reset), refused (VXLAN from a "
            "node outside the ring)", ["what"], registry=self.registry)
        self.pinned_connections = Gauge(
            "flock_pinned_connections", "A pinned pod's open connections: conntrack entries with its slot's mark, "
            "ESTABLISHED TCP and assured UDP (terminating pods every tick, the others every 30 s)",
            ["namespace", "pod"], registry=self.registry)
        self.conntrack_count_seconds = Histogram(
            "flock_conntrack_count_seconds", "Duration of one count of pinned connections in conntrack (ctnetlink)",
            registry=self.registry, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.conntrack_errors = Counter("flock_conntrack_count_errors", "Counts of pinned connections that failed",
                                        registry=self.registry)

        self.nexthop_groups = Gauge("flock_nexthop_groups", "1 for the way the node's anycast routes are "
                                    "written (mode: resilient next-hop groups or plain multipath), 0 for the other",
                                    ["mode"], registry=self.registry)

        self.events_dropped = Counter("flock_events_dropped", "Events not posted: over an object's rate, "
                                      "or the queue was full", ["why"], registry=self.registry)
        self.api_up = Gauge("flock_apiserver_up", "1 while the API server answers the agent's pod LIST, else 0",
                            registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
