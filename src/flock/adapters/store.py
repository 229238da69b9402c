"""Durable allocation records: one JSON file per container under ``<stateDir>/allocations``.

Writes are atomic (temp file, fsync, rename, fsync of the directory:
:mod:`flock.adapters.files`) so a crash leaves either the old record or the new one,
never half of one. On start the store reloads
every record; a record that cannot be parsed is moved to ``<stateDir>/quarantine`` and
reported, never silently dropped and never fatal; flock.core.recovery then rebuilds what it
described from the kernel. ``pinSlot`` (connection pinning, flock.core.pinning) is
written only for a pinned pod: records written before it existed load as unpinned, and
an older agent ignores it. Listeners registered with
:meth:`AllocationStore.add_listener` run after every commit and removal (they wake the
reconciler).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import pathlib
import time
from collections.abc import Callable
from typing import Any

import aiofiles
import aiofiles.os

from flock.adapters.files import fsync_directory, write_atomically
from flock.core.model import Allocation, AllocationState, ContainerID, IPAddress, PodRef
from flock.core.recovery import MAX_SALVAGE_BYTES, Quarantined, quarantine_time
from flock.errors import StateError

logger = logging.getLogger(__name__)

RECORD_VERSION = 1


def encode_allocation(allocation: Allocation) -> str:
    return json.dumps({
        "version": RECORD_VERSION,
        "containerID": allocation.container_id,
        "pod": {"namespace": allocation.pod.namespace, "name": allocation.pod.name,
                "uid": allocation.pod.uid},
        "hostIfname": allocation.host_ifname,
        "podIPs": [str(ip) for ip in allocation.pod_ips],
        "anycast": [str(ip) for ip in allocation.anycast],
        "state": allocation.state.value,
        **({"pinSlot": allocation.pin_slot} if allocation.pin_slot is not None else {}),
    }, indent=2) + "\n"


def decode_allocation(text: str) -> Allocation:
    """Parse a record; raises ValueError (with what is wrong) for anything malformed."""
    try:
        data: Any = json.loads(text)
        if data.get("version") != RECORD_VERSION:
            raise ValueError(f"unsupported record version {data.get('version')!r}")
        pod = data["pod"]
        return Allocation(
            container_id=ContainerID(str(data["containerID"])),
            pod=PodRef(namespace=str(pod["namespace"]), name=str(pod["name"]), uid=str(pod.get("uid", ""))),
            host_ifname=str(data["hostIfname"]),
            pod_ips=_addresses(data["podIPs"]),
            anycast=_addresses(data["anycast"]),
            state=AllocationState(data["state"]),
            pin_slot=_slot(data.get("pinSlot")),
        )
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"malformed record: {exc!r}") from exc


def _slot(value: Any) -> int | None:
    """``pinSlot``: absent in records written before connection pinning (and when unpinned)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"pinSlot {value!r} is not a positive integer")
    return value


def _addresses(items: Any) -> tuple[IPAddress, ...]:
    return tuple(ipaddress.ip_address(str(item)) for item in items)


def _safe_name(container_id: str) -> str:
    # Container ids are hex from real runtimes; refuse anything that could escape the dir.
    if not container_id or "/" in container_id or container_id.startswith("."):
        raise StateError(f"invalid container id {container_id!r}")
    return container_id


class AllocationStore:
    """The agent's allocation records, cached in memory, persisted one file per container."""

    def __init__(self, state_dir: pathlib.Path) -> None:
        self.records_dir = state_dir / "allocations"
        self.quarantine_dir = state_dir / "quarantine"
        self._records: dict[ContainerID, Allocation] = {}
        self._listeners: list[Callable[[], None]] = []

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (synchronously, must not block) after every commit and removal."""
        self._listeners.append(callback)

    def all(self) -> list[Allocation]:
        return list(self._records.values())

    def get(self, container_id: ContainerID) -> Allocation | None:
        return self._records.get(container_id)

    async def load(self) -> list[str]:
        """Reload every record from disk. Returns one message per quarantined record."""
        problems: list[str] = []
        await aiofiles.os.makedirs(self.records_dir, exist_ok=True)
        self._records.clear()
        for path in sorted(self.records_dir.glob("*.json")):
            try:
                async with aiofiles.open(path) as f:
                    allocation = decode_allocation(await f.read())
                if f"{allocation.container_id}.json" != path.name:
                    raise ValueError(f"record names container {allocation.container_id!r}")
            except (OSError, ValueError) as exc:
                problems.append(await self._quarantine(path, str(exc)))
                continue
            self._records[allocation.container_id] = allocation
        for path in self.records_dir.glob(".*.tmp"):  # a write interrupted by a crash
            await aiofiles.os.remove(path)
        return problems

    async def quarantined(self, limit: int = 256) -> list[Quarantined]:
        """The records moved aside, newest first: at most ``limit``, each read up to
        MAX_SALVAGE_BYTES (flock.core.recovery rebuilds records from them). Unreadable ones are skipped."""
        try:
            paths = [p for p in self.quarantine_dir.iterdir() if p.is_file()]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StateError(f"list {self.quarantine_dir}: {exc.strerror or exc}") from exc
        paths.sort(key=lambda p: (quarantine_time(p.name), p.name), reverse=True)
        found = []
        for path in paths[:limit]:
            try:
                async with aiofiles.open(path, errors="replace") as f:
                    found.append(Quarantined(path.name, await f.read(MAX_SALVAGE_BYTES)))
            except OSError as exc:
                logger.warning("cannot read quarantined record %s: %s", path, exc.strerror or exc)
        return found

    async def put(self, allocation: Allocation) -> None:
        """Write (create or overwrite) a record durably, then update the cache."""
        path = self.records_dir / f"{_safe_name(allocation.container_id)}.json"
        await self._write_atomically(path, encode_allocation(allocation))
        self._records[allocation.container_id] = allocation
        if allocation.state is not AllocationState.PENDING:  # what the reconciler routes changed
            self._notify()

    async def commit(self, container_id: ContainerID, anycast: tuple[IPAddress, ...]) -> Allocation:
        """Mark a pending allocation committed with its final anycast list."""
        current = self._records.get(container_id)
        if current is None:
            raise StateError(f"commit {container_id}: no such allocation")
        committed = dataclasses.replace(current, anycast=anycast, state=AllocationState.COMMITTED)
        await self.put(committed)
        return committed

    async def remove(self, container_id: ContainerID) -> Allocation | None:
        """Delete a record (absent is fine). Returns what was removed."""
        path = self.records_dir / f"{_safe_name(container_id)}.json"
        try:
            await aiofiles.os.remove(path)
            await aiofiles.os.wrap(fsync_directory)(path.parent)  # or a crash could bring it back
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StateError(f"remove {path}: {exc.strerror}") from exc
        removed = self._records.pop(container_id, None)
        self._notify()
        return removed

    def _notify(self) -> None:
        for callback in self._listeners:
            callback()

    async def _write_atomically(self, path: pathlib.Path, text: str) -> None:
        try:
            await aiofiles.os.makedirs(path.parent, exist_ok=True)
            await aiofiles.os.wrap(write_atomically)(path, text.encode(), 0o644)
        except OSError as exc:
            raise StateError(f"write {path}: {exc.strerror or exc}") from exc

    async def _quarantine(self, path: pathlib.Path, why: str) -> str:
        await aiofiles.os.makedirs(self.quarantine_dir, exist_ok=True)
        target = self.quarantine_dir / f"{path.name}.{int(time.time())}"
        await aiofiles.os.replace(path, target)
        message = f"corrupt allocation record {path.name} moved to {target}: {why}"
        logger.error(message)
        return message
