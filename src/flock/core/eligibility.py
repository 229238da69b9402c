"""Whether a Pod, as the API returns it, may attract anycast traffic.

Eligible iff its Ready condition is "True" and it has no ``deletionTimestamp``:
a pod stops attracting traffic the moment the API server marks it for deletion,
not when its containers finally exit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

READY_AND_NOT_TERMINATING = "ready-and-not-terminating"
READY_ONLY = "ready-only"
RULES = (READY_AND_NOT_TERMINATING, READY_ONLY)
"""``ready-only`` is the old rule that flock fixes; it exists only so the lab can show the
difference (``flock lab run --compare``). Never use it in production."""


def ineligibility_reason(pod: Mapping[str, Any], rule: str = READY_AND_NOT_TERMINATING) -> str | None:
    """None if the pod is eligible, else a short reason: "terminating" or "not ready"."""
    if rule != READY_ONLY and (pod.get("metadata") or {}).get("deletionTimestamp"):
        return "terminating"
    conditions = (pod.get("status") or {}).get("conditions") or []
    ready = any(isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == "True"
                for c in conditions)
    return None if ready else "not ready"


def pod_anycast_eligible(pod: Mapping[str, Any]) -> bool:
    """Ready condition "True" and no deletionTimestamp."""
    return ineligibility_reason(pod) is None
