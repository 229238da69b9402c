"""BirdControl against a real BIRD (marker ``bird``), plus its reply parsing and FakeBird.

The real BIRD runs in a fresh ``flk-*`` namespace from a directory of its own; the
BirdControl under test writes the very file BIRD was started with (``-c``).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from flock.adapters.bird import BirdControl, parse_reply, render_bird_conf
from flock.errors import BirdConfigRejected, BirdError, BirdUnavailable
from flock.testing import FakeBird
from tests.bird.test_render import GOLDEN, SCENARIOS
from tests.support import birdlab

MINIMAL = render_bird_conf(SCENARIOS["minimal"])
ACTIVE = render_bird_conf(SCENARIOS["dual_stack_two_peers"])
BROKEN = ACTIVE.replace("blackhole;", "blakhole;", 1)


@pytest.fixture
def birds() -> Iterator[birdlab.Birds]:
    with birdlab.Birds() as started:
        yield started


@pytest.fixture
def running(make_netns: Any, birds: birdlab.Birds) -> birdlab.RunningBird:
    """A BIRD running the minimal config in its own namespace."""
    return birds.start(make_netns("bird"), MINIMAL)


def control_for(daemon: birdlab.RunningBird, **kwargs: Any) -> BirdControl:
    return BirdControl(config_path=daemon.config_path, socket=daemon.socket, timeout=10, **kwargs)


class SubprocessSpy:
    """Counts subprocesses BirdControl starts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.argv: list[tuple[str, ...]] = []
        real = asyncio.create_subprocess_exec

        async def spy(*argv: Any, **kwargs: Any) -> asyncio.subprocess.Process:
            self.argv.append(tuple(map(str, argv)))
            return await real(*argv, **kwargs)

        # flock.adapters.bird looks the function up on the asyncio module at each call.
        monkeypatch.setattr(asyncio, "create_subprocess_exec", spy)


def leftovers(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------------------
# Every golden file is a valid BIRD config
# ---------------------------------------------------------------------------


@pytest.mark.bird
def test_bird_accepts_every_golden_file() -> None:
    goldens = sorted(GOLDEN.glob("*/bird.conf"))
    assert goldens, f"no golden files under {GOLDEN}"
    for golden in goldens:
        done = subprocess.run(["bird", "-p", "-c", str(golden)], capture_output=True,
                              text=True, timeout=30, check=False)
        assert done.returncode == 0, f"bird -p rejects {golden}: {done.stderr.strip()}"


# ---------------------------------------------------------------------------
# BirdControl against a running BIRD
# ---------------------------------------------------------------------------


@pytest.mark.bird
async def test_applying_new_text_reconfigures_bird(running: birdlab.RunningBird) -> None:
    control = control_for(running)
    assert await control.apply(ACTIVE) is True
    assert running.config_path.read_text() == ACTIVE
    assert "203.0.113.0/26" in running.birdc("show", "route", "protocol", "flock_originate_v4")
    assert "flock_peer_192_0_2_1" in running.birdc("show", "protocols")
    assert leftovers(running.directory) == []
    assert await control.apply(MINIMAL) is True
    assert "flock_peer_192_0_2_1" not in running.birdc("show", "protocols")


@pytest.mark.bird
async def test_applying_the_same_text_again_runs_no_birdc(
        running: birdlab.RunningBird, monkeypatch: pytest.MonkeyPatch) -> None:
    control = control_for(running)
    assert await control.apply(ACTIVE) is True
    spy = SubprocessSpy(monkeypatch)

    assert await control.apply(ACTIVE) is False
    # A restarted agent adopts the file BIRD runs: no reload either.
    assert await control_for(running).apply(ACTIVE) is False

    assert spy.argv == [], "neither bird -p nor birdc ran"
    # The spy does see them when there is something to apply.
    assert await control.apply(MINIMAL) is True
    assert any("birdc" in argv[0] for argv in spy.argv) and any("-p" in argv for argv in spy.argv), spy.argv


def protocols(running: birdlab.RunningBird) -> list[tuple[str, str]]:
    """(name, proto) of BIRD's protocols: what the running config defines (no timestamps)."""
    lines = running.birdc("show", "protocols").splitlines()
    rows = [line.split() for line in lines[1:] if line.strip() and not line.startswith("BIRD")]
    return [(row[0], row[1]) for row in rows]


@pytest.mark.bird
async def test_text_rejected_by_bird_check_leaves_file_and_bird_alone(
        running: birdlab.RunningBird) -> None:
    control = control_for(running)
    assert await control.apply(ACTIVE) is True
    before = protocols(running)

    with pytest.raises(BirdConfigRejected, match=r"bird -p rejected .*syntax error"):
        await control.apply(BROKEN)

    assert running.config_path.read_text() == ACTIVE
    assert protocols(running) == before
    assert leftovers(running.directory) == []
    assert running.running()


@pytest.mark.bird
async def test_text_refused_by_configure_puts_the_previous_file_back(
        running: birdlab.RunningBird) -> None:
    # `true` stands in for `bird -p`, so the broken text reaches BIRD's own configure.
    control = control_for(running, bird="true")
    assert await control.apply(ACTIVE) is True

    with pytest.raises(BirdConfigRejected, match=r"8002 .*syntax error"):
        await control.apply(BROKEN)

    assert running.config_path.read_text() == ACTIVE
    assert "flock_peer_192_0_2_1" in running.birdc("show", "protocols")
    assert "Reconfigured" in running.birdc("configure")  # the restored file is the live one
    assert running.running()


@pytest.mark.bird
async def test_an_absent_socket_raises_bird_unavailable_promptly(tmp_path: pathlib.Path) -> None:
    config_path = tmp_path / "bird.conf"
    control = BirdControl(config_path=config_path, socket=tmp_path / "absent.ctl", timeout=10)
    started = time.monotonic()
    with pytest.raises(BirdUnavailable, match="did not answer"):
        await control.apply(ACTIVE)
    assert time.monotonic() - started < 5
    # Written anyway: BIRD reads it when it starts. And the same text is configured
    # again on the next apply, since no BIRD confirmed it yet.
    assert config_path.read_text() == ACTIVE
    assert oct(config_path.stat().st_mode & 0o777) == oct(0o600)  # it may hold passwords
    with pytest.raises(BirdUnavailable):
        await control.apply(ACTIVE)


@pytest.mark.bird
async def test_a_bird_started_later_is_configured_by_the_next_apply(
        tmp_path: pathlib.Path, make_netns: Any, birds: birdlab.Birds) -> None:
    directory = birds.directory("late")
    control = BirdControl(config_path=directory / "bird.conf", socket=directory / "bird.ctl",
                          timeout=10)
    with pytest.raises(BirdUnavailable):
        await control.apply(ACTIVE)
    bird = birds.start(make_netns("late"), MINIMAL, directory=directory)
    assert await control.apply(ACTIVE) is True
    assert "flock_peer_192_0_2_1" in bird.birdc("show", "protocols")


# ---------------------------------------------------------------------------
# Timeouts (no BIRD needed)
# ---------------------------------------------------------------------------


async def test_a_hung_birdc_is_killed_at_the_timeout(tmp_path: pathlib.Path) -> None:
    pid_file = tmp_path / "birdc.pid"
    hung = tmp_path / "hung-birdc"
    hung.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n")
    hung.chmod(0o755)
    control = BirdControl(config_path=tmp_path / "bird.conf", socket=tmp_path / "bird.ctl",
                          timeout=0.5, bird="true", birdc=str(hung))
    started = time.monotonic()
    with pytest.raises(BirdUnavailable, match=r"no answer within 0.5 s"):
        await control.apply(ACTIVE)
    assert time.monotonic() - started < 5
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def fake_bird_pair(tmp_path: pathlib.Path) -> tuple[str, str]:
    """A ``bird`` that records the mode of the file it checks, a ``birdc`` that says Reconfigured."""
    bird, birdc = tmp_path / "fake-bird", tmp_path / "fake-birdc"
    bird.write_text(f'#!/bin/sh\nstat -c %a "$3" >> {tmp_path / "checked-modes"}\n')
    birdc.write_text("#!/bin/sh\nprintf '0001 BIRD ready.\\n0002-Reading configuration\\n0003 Reconfigured\\n'\n")
    for tool in (bird, birdc):
        tool.chmod(0o755)
    return str(bird), str(birdc)


async def test_bird_conf_and_its_candidate_are_readable_by_their_owner_only(tmp_path: pathlib.Path) -> None:
    bird, birdc = fake_bird_pair(tmp_path)
    config_path = tmp_path / "etc" / "bird.conf"
    config_path.parent.mkdir()
    control = BirdControl(config_path=config_path, socket=tmp_path / "bird.ctl", timeout=5, bird=bird, birdc=birdc)
    text = render_bird_conf(SCENARIOS["password"])
    assert await control.apply(text) is True
    assert (tmp_path / "checked-modes").read_text().split() == ["600"]  # the candidate bird -p read
    assert config_path.stat().st_mode & 0o777 == 0o600 and config_path.read_text() == text
    assert leftovers(config_path.parent) == []

    # A file someone made world-readable (an older flock wrote 0644) loses the others' bits;
    # its owner and group keep theirs (BIRD may run as its group: Debian's root:bird 0640).
    config_path.chmod(0o664)
    assert await control.apply(MINIMAL) is True
    assert config_path.stat().st_mode & 0o777 == 0o660
    assert (tmp_path / "checked-modes").read_text().split() == ["600", "660"]


async def test_a_missing_bird_executable_is_a_bird_error(tmp_path: pathlib.Path) -> None:
    control = BirdControl(config_path=tmp_path / "bird.conf", socket=tmp_path / "bird.ctl",
                          timeout=1, bird=str(tmp_path / "no-bird"))
    with pytest.raises(BirdError, match="cannot run"):
        await control.apply(ACTIVE)
    assert not (tmp_path / "bird.conf").exists()


# ---------------------------------------------------------------------------
# Reply codes (captured from BIRD 2.0.12)
# ---------------------------------------------------------------------------


def test_reply_lines_carry_code_text_and_whether_they_end_the_reply() -> None:
    out = ("0001 BIRD 2.0.12 ready.\n"
           "0002-Reading configuration from /etc/bird/bird.conf\n"
           "8002 /etc/bird/bird.conf:3:51 syntax error, unexpected CF_SYM_UNDEFINED\n")
    assert [(line.code, line.final) for line in parse_reply(out)] == [
        (1, True), (2, False), (8002, True)]
    assert str(parse_reply(out)[2]).startswith("8002 /etc/bird/bird.conf:3:51 syntax error")


def test_continuation_lines_and_plain_text_are_not_reply_lines() -> None:
    out = ("2002-Name       Proto      Table      State  Since         Info\n"
           "1002-device1    Device     ---        up     08:25:51.227\n"
           "     s4         Static     master4    up     08:25:51.227\n"
           "0000 \n")
    assert [line.code for line in parse_reply(out)] == [2002, 1002, 0]
    assert parse_reply("Unable to connect to server control socket (x): No such file") == []


# ---------------------------------------------------------------------------
# FakeBird
# ---------------------------------------------------------------------------


async def test_fake_bird_records_applied_texts_and_skips_unchanged_ones() -> None:
    fake = FakeBird(live="old")
    assert await fake.apply("old") is False
    assert await fake.apply("new") is True
    assert await fake.apply("new") is False
    assert fake.applied == ["new"]
    assert fake.live_text() == "new"


async def test_fake_bird_can_reject_and_be_unavailable() -> None:
    fake = FakeBird()
    fake.reject = "8002 bird.conf:1:1 syntax error"
    with pytest.raises(BirdConfigRejected, match="syntax error"):
        await fake.apply("bad")
    assert fake.live_text() is None and fake.applied == []
    fake.reject, fake.unavailable = None, True
    with pytest.raises(BirdUnavailable):
        await fake.apply("good")
    assert fake.live_text() == "good"
    fake.unavailable = False
    assert await fake.apply("good") is True  # configured again, like BirdControl
    assert fake.applied == ["good"]
