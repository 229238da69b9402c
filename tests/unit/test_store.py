"""The allocation store: atomic records, reload, quarantine of corrupt ones, listeners."""

from __future__ import annotations

import ipaddress
import pathlib

import pytest

from flock.adapters.store import AllocationStore
from flock.core.model import AllocationState, ContainerID
from flock.errors import StateError
from tests.unit.factories import alloc


async def test_records_survive_a_restart(tmp_path: pathlib.Path) -> None:
    store = AllocationStore(tmp_path)
    await store.load()
    await store.put(alloc("web-1", committed=False))
    committed = await store.commit(ContainerID("c-default-web-1"), (ipaddress.ip_address("198.51.100.10"),))
    assert committed.state is AllocationState.COMMITTED

    reloaded = AllocationStore(tmp_path)
    assert await reloaded.load() == []
    assert reloaded.all() == [committed]


async def test_commit_and_removal_notify_listeners_pending_does_not(tmp_path: pathlib.Path) -> None:
    store = AllocationStore(tmp_path)
    await store.load()
    calls: list[str] = []
    store.add_listener(lambda: calls.append("wake"))
    await store.put(alloc("web-1", committed=False))
    assert calls == []
    await store.commit(ContainerID("c-default-web-1"), ())
    await store.remove(ContainerID("c-default-web-1"))
    assert calls == ["wake", "wake"]


async def test_removing_an_unknown_container_is_fine(tmp_path: pathlib.Path) -> None:
    store = AllocationStore(tmp_path)
    await store.load()
    assert await store.remove(ContainerID("nope")) is None


async def test_corrupt_record_is_quarantined_and_the_rest_still_load(tmp_path: pathlib.Path) -> None:
    store = AllocationStore(tmp_path)
    await store.load()
    good = alloc("web-1")
    await store.put(good)
    (tmp_path / "allocations" / "broken.json").write_text('{"version": 1, "containerID": ')
    (tmp_path / "allocations" / "wrongname.json").write_text(
        (tmp_path / "allocations" / "c-default-web-1.json").read_text())

    reloaded = AllocationStore(tmp_path)
    problems = await reloaded.load()
    assert reloaded.all() == [good]
    assert len(problems) == 2 and any("broken.json" in p for p in problems)
    quarantined = sorted(p.name for p in (tmp_path / "quarantine").iterdir())
    assert [q.split(".json")[0] for q in quarantined] == ["broken", "wrongname"]


async def test_leftover_temp_file_from_a_crash_is_removed(tmp_path: pathlib.Path) -> None:
    (tmp_path / "allocations").mkdir(parents=True)
    (tmp_path / "allocations" / ".c1.json.123.tmp").write_text("half a rec")
    store = AllocationStore(tmp_path)
    assert await store.load() == []
    assert list((tmp_path / "allocations").iterdir()) == []


async def test_container_ids_cannot_escape_the_state_dir(tmp_path: pathlib.Path) -> None:
    store = AllocationStore(tmp_path)
    await store.load()
    with pytest.raises(StateError):
        await store.remove(ContainerID("../etc"))
