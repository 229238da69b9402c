"""The image tests build with buildah as root (scripts/image.sh installs buildah and
debootstrap from Debian's packages when they are missing). Without root they skip on a
laptop, and fail under CI, like the netns and BIRD tests (tests/conftest.py)."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.support.environment import UNDER_CI


def _problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root (buildah with vfs storage and chroot isolation)"
    if shutil.which("buildah") is None and shutil.which("apt-get") is None:
        return "needs buildah, or apt-get to install it"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    problem = _problem()
    if problem is None:
        return
    if UNDER_CI:
        pytest.fail(f"image test cannot run under CI: {problem}", pytrace=False)
    pytest.skip(problem)
