"""Which Events reach the API server: kubelet's event correlator, in small.

Whatever a pod does, the agent must not flood the API server (or its own memory) with
Events. Like client-go's ``EventCorrelator``, per involved object:

- a token bucket (``burst`` Events, one more every ``refill_seconds``: kubelet's
  ``EventSourceObjectSpamFilter`` uses 25 and 300 s) caps what is sent; an Event with
  no token left is dropped and counted;
- an Event identical to one sent within ``repeat_seconds`` (same object, type, reason
  and message) is not posted again: the first one's ``count`` goes up instead, as
  ``kubectl get events`` shows ("x3 over 5m").

State is bounded too: at most ``max_objects`` objects are remembered (least recently
seen forgotten first). Pure: the clock is passed in.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import time
from collections.abc import Callable, Hashable


class Verdict(enum.Enum):
    POST = "post"  # a new Event
    REPEAT = "repeat"  # raise the count of the identical Event posted before
    DROP = "drop"  # over the object's rate


@dataclasses.dataclass
class _Object:
    tokens: float
    updated: float
    recent: dict[Hashable, tuple[float, int]]  # event key -> (first posted, count)
    dropped: int = 0


class EventLimiter:
    def __init__(self, *, burst: int = 25, refill_seconds: float = 300.0, repeat_seconds: float = 600.0,
                 max_objects: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.refill_seconds = refill_seconds
        self.repeat_seconds = repeat_seconds
        self.max_objects = max_objects
        self.clock = clock
        self._objects: collections.OrderedDict[Hashable, _Object] = collections.OrderedDict()

    def judge(self, obj: Hashable, event: Hashable) -> tuple[Verdict, int]:
        """Whether to post ``event`` about ``obj`` now; with REPEAT, the Event's new count.

        With DROP, the number is how many of the object's Events were dropped in a row
        (1 for the first: log that one).
        """
        now = self.clock()
        state = self._objects.pop(obj, None) or _Object(tokens=float(self.burst), updated=now, recent={})
        self._objects[obj] = state  # most recently seen last
        while len(self._objects) > self.max_objects:
            self._objects.popitem(last=False)
        state.tokens = min(float(self.burst), state.tokens + (now - state.updated) / self.refill_seconds)
        state.updated = now
        if state.tokens < 1.0:
            state.dropped += 1
            return Verdict.DROP, state.dropped
        state.tokens -= 1.0
        state.dropped = 0
        state.recent = {key: seen for key, seen in state.recent.items() if now - seen[0] < self.repeat_seconds}
        first, count = state.recent.get(event, (now, 0))
        state.recent[event] = (first, count + 1)
        return (Verdict.REPEAT, count + 1) if count else (Verdict.POST, 1)

    def forget(self, obj: Hashable, event: Hashable) -> None:
        """The Event could not be posted: a repeat must post it anew."""
        state = self._objects.get(obj)
        if state is not None:
            state.recent.pop(event, None)
