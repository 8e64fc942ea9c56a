"""Runtime config updates (admin UpdateBrokerConfig): only RUNTIME_CONFIG_KEYS, all or nothing.

The key list lives with the protocol (actors/broker/messages.py), so a request naming any
other key is refused while it is decoded; this checks again (defence in depth) and parses
each value with broker.conf's own rules and limits before anything changes. No value ever
reaches a path, a subprocess or a shell: the allowed keys are numbers and flags.
"""

from __future__ import annotations

import copy

from rmqz.actors.broker import messages as proto
from rmqz.actors.broker.config import BrokerConfig, ConfigError, _check, _convert, snake


def apply_runtime_update(config: BrokerConfig, updates: dict[str, str]) -> dict[str, object]:
    """Set the updates on ``config`` (in place); returns {field: new value}. ConfigError
    (naming the key) leaves ``config`` unchanged."""
    parsed: dict[str, object] = {}
    for key, raw in updates.items():
        if key not in proto.RUNTIME_CONFIG_KEYS:
            raise ConfigError(f"{key} cannot be changed at runtime")
        name = snake(key)
        parsed[name] = _convert(key, name, raw)
    trial = copy.copy(config)
    for name, value in parsed.items():
        setattr(trial, name, value)
    _check(trial)  # the whole config must still be valid
    for name, value in parsed.items():
        setattr(config, name, value)
    return parsed
