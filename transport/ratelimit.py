"""Log rate limiting for events that can be triggered by remote input (malformed frames,
unknown targets, drops). One log line per key per interval, carrying how many events were
suppressed since the last line, so a garbage flood cannot flood the log.

Pure (stdlib only, time comes in as ``now_ms``) so it is trivially testable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_LOG_INTERVAL_MS = 5_000
MAX_KEYS = 256  # keys are a fixed set of event names; the bound guards against misuse

assert 0 < DEFAULT_LOG_INTERVAL_MS <= 3_600_000
assert 0 < MAX_KEYS <= 10_000


@dataclass(slots=True)
class LogLimiter:
    interval_ms: int = DEFAULT_LOG_INTERVAL_MS
    _last_ms: dict[str, int] = field(default_factory=dict)
    _suppressed: dict[str, int] = field(default_factory=dict)

    def allow(self, key: str, now_ms: int) -> int | None:
        """``None`` = stay quiet; otherwise log now, and the int is how many earlier
        events of this key were suppressed since the last line."""
        last = self._last_ms.get(key)
        if last is not None and now_ms - last < self.interval_ms:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        if last is None and len(self._last_ms) >= MAX_KEYS:
            return None
        self._last_ms[key] = now_ms
        return self._suppressed.pop(key, 0)
