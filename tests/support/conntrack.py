"""Conntrack entries made directly through ctnetlink (IPCTNL_MSG_CT_NEW), for tests and
benchmarks that need many of them fast: thousands in well under a second, where
``conntrack -I`` costs a process each (and conntrack-tools 1.4.7 writes a wrong mark).

Entries go into the conntrack table of the calling thread's netns: call
:func:`make_entries` through :func:`in_netns`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections.abc import Sequence

from flock.adapters.conntrack import (
    BE16,
    BE32,
    CT_NEW,
    CTA_IP_V4_DST,
    CTA_IP_V4_SRC,
    CTA_IP_V6_DST,
    CTA_IP_V6_SRC,
    CTA_MARK,
    CTA_PROTO_DST_PORT,
    CTA_PROTO_NUM,
    CTA_PROTO_SRC_PORT,
    CTA_PROTOINFO,
    CTA_PROTOINFO_TCP,
    CTA_PROTOINFO_TCP_STATE,
    CTA_STATUS,
    CTA_TIMEOUT,
    CTA_TUPLE_IP,
    CTA_TUPLE_ORIG,
    CTA_TUPLE_PROTO,
    CTA_TUPLE_REPLY,
    NFGENMSG,
    NFNETLINK_V0,
    attr,
    ctnl_socket,
    nested,
)
from flock.adapters.rtnetlink import NLM_F_CREATE, NLM_F_EXCL
from flock.core.drain import IPPROTO_TCP, IPS_ASSURED

IPS_SEEN_REPLY = 1 << 1
IPS_CONFIRMED = 1 << 3  # a created entry is confirmed: a request without the bit is refused (EBUSY)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One connection: client -> server, its protocol, TCP state, status and ct mark."""

    client: str
    server: str
    sport: int
    dport: int = 8080
    protocol: int = IPPROTO_TCP
    tcp_state: int | None = 3  # ESTABLISHED
    status: int = IPS_SEEN_REPLY | IPS_ASSURED
    mark: int = 0
    timeout: int = 3600


def _tuple(src: str, dst: str, sport: int, dport: int, protocol: int) -> bytes:
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    kinds = (CTA_IP_V4_SRC, CTA_IP_V4_DST) if a.version == 4 else (CTA_IP_V6_SRC, CTA_IP_V6_DST)
    return (nested(CTA_TUPLE_IP, attr(kinds[0], a.packed), attr(kinds[1], b.packed))
            + nested(CTA_TUPLE_PROTO, attr(CTA_PROTO_NUM, bytes([protocol])),
                     attr(CTA_PROTO_SRC_PORT, BE16.pack(sport)), attr(CTA_PROTO_DST_PORT, BE16.pack(dport))))


def new_request(entry: Entry) -> bytes:
    family = socket.AF_INET if ipaddress.ip_address(entry.client).version == 4 else socket.AF_INET6
    body = (NFGENMSG.pack(family, NFNETLINK_V0, 0)
            + nested(CTA_TUPLE_ORIG, _tuple(entry.client, entry.server, entry.sport, entry.dport, entry.protocol))
            + nested(CTA_TUPLE_REPLY, _tuple(entry.server, entry.client, entry.dport, entry.sport, entry.protocol))
            + attr(CTA_STATUS, BE32.pack(entry.status | IPS_CONFIRMED)) + attr(CTA_TIMEOUT, BE32.pack(entry.timeout))
            + attr(CTA_MARK, BE32.pack(entry.mark)))
    if entry.tcp_state is not None:
        body += nested(CTA_PROTOINFO, nested(CTA_PROTOINFO_TCP, attr(CTA_PROTOINFO_TCP_STATE,
                                                                     bytes([entry.tcp_state]))))
    return body


def make_entries(entries: Sequence[Entry]) -> None:
    """Create ``entries`` in this thread's netns's conntrack table. Raises OSError if the
    kernel refused one."""
    with ctnl_socket(30.0) as sock:
        answers = sock.transact([(CT_NEW, NLM_F_CREATE | NLM_F_EXCL, new_request(e)) for e in entries])
    failed = [(e, a) for e, a in zip(entries, answers, strict=True) if a != 0]
    if failed:
        entry, answer = failed[0]
        raise OSError(answer or 0, f"{len(failed)} of {len(entries)} conntrack entries refused, first {entry}: "
                      f"{'no answer' if answer is None else answer}")
