"""Rebuilding allocation records from the kernel: salvaging damaged records, planning."""

from __future__ import annotations

import ipaddress
import pathlib

from flock.adapters.store import AllocationStore, encode_allocation
from flock.core.model import AllocationState, ContainerID, PodRef
from flock.core.recovery import (
    MAX_SALVAGE_BYTES,
    KernelVeth,
    Quarantined,
    Salvaged,
    is_flock_veth,
    plan_recovery,
    quarantined_container_id,
    salvage,
)
from tests.unit.factories import alloc

ip = ipaddress.ip_address


def names_of(container: str) -> list[str]:
    """A stand-in for host_ifname: one name per container id, as a test can read it."""
    return [f"flock{sum(container.encode()) % 16**8:08x}"]


WEB1 = alloc("web-1", ("203.0.113.2", "2001:db8:200::2"), ("198.51.100.10", "2001:db8:100::10"),
             uid="uid-1", dev=names_of("c-default-web-1")[0])
WEB1_TEXT = encode_allocation(WEB1)
WEB1_VETH = KernelVeth(WEB1.host_ifname, (ip("203.0.113.2"), ip("2001:db8:200::2")), (ip("198.51.100.10"),))


def test_a_truncated_record_still_names_its_container_and_pod() -> None:
    cut = WEB1_TEXT[:WEB1_TEXT.index('"podIPs"') + 15]
    assert salvage(cut) == Salvaged(container_id="c-default-web-1", pod=PodRef("default", "web-1", "uid-1"),
                                    host_ifname=WEB1.host_ifname, anycast=())


def test_a_record_cut_inside_the_pod_name_names_no_pod() -> None:
    cut = WEB1_TEXT[:WEB1_TEXT.index('"web-1"') + 4]
    assert salvage(cut).pod is None and salvage(cut).container_id == "c-default-web-1"


def test_a_complete_anycast_list_is_salvaged_and_a_cut_one_is_not() -> None:
    cut = WEB1_TEXT[:WEB1_TEXT.index('"state"')]
    assert salvage(cut).anycast == (ip("198.51.100.10"), ip("2001:db8:100::10"))
    assert salvage(WEB1_TEXT[:WEB1_TEXT.index("2001:db8:100::10")]).anycast == ()


def test_garbage_and_huge_records_salvage_nothing_and_stay_bounded() -> None:
    assert salvage("\0" * 4096) == Salvaged()
    assert salvage('{"pod": {"namespace": "Bad Name!", "name": "x"}}').pod is None
    huge = " " * MAX_SALVAGE_BYTES + WEB1_TEXT  # only the first MAX_SALVAGE_BYTES are read
    assert salvage(huge) == Salvaged()


def test_quarantined_file_names_give_the_container_id() -> None:
    assert quarantined_container_id("c-default-web-1.json.1700000000") == "c-default-web-1"
    assert quarantined_container_id("notes.txt") is None
    assert is_flock_veth("flock1a2b3c4d") and not is_flock_veth("flock1a2b3c4") and not is_flock_veth("eth0")


def test_an_unowned_veth_is_rebuilt_from_the_kernel_and_its_quarantined_record() -> None:
    damaged = Quarantined("c-default-web-1.json.1700000000", WEB1_TEXT[:WEB1_TEXT.index('"podIPs"')])
    plan = plan_recovery(veth_names={WEB1.host_ifname}, unowned=[WEB1_VETH], records=[],
                         quarantined=[damaged], names_of=names_of)
    [recovered] = plan.recovered
    assert recovered.pod_known
    assert recovered.allocation == WEB1.__class__(
        container_id=ContainerID("c-default-web-1"), pod=PodRef("default", "web-1", "uid-1"),
        host_ifname=WEB1.host_ifname, pod_ips=WEB1.pod_ips, anycast=(ip("198.51.100.10"),),
        state=AllocationState.COMMITTED)
    assert WEB1.host_ifname in recovered.message and "203.0.113.2" in recovered.message
    assert plan.released == ()


def test_the_newest_quarantined_record_of_a_veth_wins() -> None:
    older = Quarantined("c-default-web-1.json.100", WEB1_TEXT.replace("uid-1", "uid-old"))
    newer = Quarantined("c-default-web-1.json.200", WEB1_TEXT[:WEB1_TEXT.index('"hostIfname"')])
    plan = plan_recovery(veth_names={WEB1.host_ifname}, unowned=[WEB1_VETH], records=[],
                         quarantined=[older, newer], names_of=names_of)
    assert plan.recovered[0].allocation.pod.uid == "uid-1"


def test_a_veth_nobody_names_gets_a_placeholder_that_is_released_once_the_veth_is_gone() -> None:
    stray = KernelVeth("flock0000abcd", (ip("203.0.113.9"),))
    plan = plan_recovery(veth_names={"flock0000abcd"}, unowned=[stray], records=[], quarantined=[],
                         names_of=names_of)
    [recovered] = plan.recovered
    assert not recovered.pod_known
    assert recovered.allocation.container_id == "recovered-flock0000abcd"
    assert recovered.allocation.pod_ips == (ip("203.0.113.9"),) and "until the veth goes" in recovered.message

    later = plan_recovery(veth_names=set(), unowned=[], records=[recovered.allocation, WEB1], quarantined=[],
                          names_of=names_of)
    assert later.recovered == () and later.released == (recovered.allocation,)


def test_a_container_id_another_record_holds_now_is_not_reused() -> None:
    damaged = Quarantined("c-default-web-1.json.1700000000", WEB1_TEXT)
    plan = plan_recovery(veth_names={WEB1.host_ifname, "flock99999999"}, unowned=[WEB1_VETH],
                         records=[alloc("web-1", dev="flock99999999")], quarantined=[damaged], names_of=names_of)
    assert plan.recovered[0].allocation.container_id == f"recovered-{WEB1.host_ifname}"
    assert not plan.recovered[0].pod_known


async def test_the_store_lists_quarantined_records_newest_first(tmp_path: pathlib.Path) -> None:
    store = AllocationStore(tmp_path)
    assert await store.quarantined() == []
    (tmp_path / "quarantine").mkdir()
    (tmp_path / "quarantine" / "a.json.100").write_text("old")
    (tmp_path / "quarantine" / "b.json.200").write_bytes(b"new \xff")
    found = await store.quarantined()
    assert [(q.file_name, q.text) for q in found] == [("b.json.200", "new \ufffd"), ("a.json.100", "old")]
    assert len(await store.quarantined(limit=1)) == 1
