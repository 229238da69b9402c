"""Facts about where the tests run."""

from __future__ import annotations

import os

UNDER_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
"""Under CI a privileged test that cannot run fails instead of skipping."""
