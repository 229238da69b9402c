"""bench/forwarding.py's set-up works: its node forwards to every pod in each mode, its
pinned mode pins every flow (through flock's PinningTable), its plain mode leaves no
conntrack behind, and its counters count what crossed the node. Small amounts, no
timing asserted (the bench itself measures)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from collections.abc import Callable
from types import ModuleType

import pytest

from tests.support.netns import sh

pytestmark = [pytest.mark.netns]

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "forwarding.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flock_bench_forwarding", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


async def test_the_forwarding_bench_node_forwards_pins_and_counts(make_netns: Callable[[str], str],
                                                                  tmp_path: pathlib.Path) -> None:
    bench = _bench()
    names = [make_netns("bench") for _ in range(2 + bench.PODS)]
    lab = await bench.build(names[0], names[1], names[2:], bench.compile_sender(tmp_path), 5)
    new, established, other = bench.streams(lab, 3000, 4)

    for mode in lab.modes:  # set_mode itself checks the ip rules each mode should have
        await bench.set_mode(lab, mode)
        got = bench.send(lab, new, 3000, 1, 30)
        assert got.sent == 3000 and got.received >= 3000, (mode, got)
        assert all(got.per_receiver), f"{mode}: a pod got nothing: {got.per_receiver}"
        tracked = bench.conntrack_count(lab)
        assert tracked == (0 if mode == "plain" else 3000), (mode, tracked)
        for stream in (established, other):
            got = bench.send(lab, stream, 200, 4, 30)
            assert got.sent > 0 and got.received >= got.sent, (mode, stream.label, got)
        floor = bench.send_floor(lab, established, 200, 4, 30)
        assert floor.received >= floor.sent > 0, floor

    await bench.set_mode(lab, "pinned")
    memory = bench.memory(lab, "pinned", 2000)
    assert (memory.entries, memory.pinned_entries) == (2000, 2000), memory
    await bench.set_mode(lab, "plain")
    assert "flock" not in sh("nft", "list", "tables", netns=lab.node)
    assert sh("ip", "rule", "show", "pref", "1000", netns=lab.node) == ""
