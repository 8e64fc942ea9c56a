"""A seeded, time-bounded mutation fuzzer (the fallback when atheris is not installed, and
the one the test suite always runs: deterministic for a given seed, no native code).

It keeps a corpus that starts from a target's seeds, mutates a random member (byte flips,
interesting integers, chunk insert/delete/duplicate, splices, and msgpack-aware edits that
replace one node of the decoded tree), runs the target, and adds inputs that reached an
outcome not seen before (accepted vs. each rejection message prefix) to the corpus -- a
cheap stand-in for coverage feedback. An input whose run escapes with anything but the
target's clean error, or takes longer than ``slow_s``, is a finding.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import msgpack

from fuzz_targets import Target

MAX_INPUT_BYTES = 64 * 1024  # inputs never grow past this: findings stay small to keep
MAX_CORPUS = 2_000
INTERESTING_INTS = [0, 1, -1, 127, 128, 255, 256, 2**15, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1,
                    2**32, 2**63 - 1, -(2**63), 2**64 - 1]
INTERESTING_VALUES: list[object] = [None, True, False, "", "a" * 300, b"", b"\x00" * 70, [], {}, [[]],
                                    {"": None}, 1.5, float("nan"), "../../etc/passwd", "\x01\x02",
                                    "\ud800".encode("utf-8", "surrogatepass"), *INTERESTING_INTS]
assert MAX_INPUT_BYTES >= 1024 and MAX_CORPUS >= 10


@dataclass
class Finding:
    data: bytes
    error: str
    seconds: float


@dataclass
class FuzzReport:
    target: str
    runs: int = 0
    corpus: int = 0
    outcomes: int = 0
    findings: list[Finding] = field(default_factory=list)


def _outcome(target: Target, data: bytes) -> tuple[str, BaseException | None]:
    try:
        target.run(data)
    except target.clean_errors as exc:
        return f"{type(exc).__name__}:{str(exc)[:24]}", None
    except Exception as exc:  # noqa: BLE001 -- the finding
        return f"bug:{type(exc).__name__}", exc
    return "ok", None


def _mutate_bytes(rng: random.Random, data: bytearray, corpus: list[bytes]) -> bytearray:
    op = rng.randrange(7)
    if op == 0 and data:  # flip bits
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif op == 1 and data:  # an interesting integer at a random place and width
        width = rng.choice([1, 2, 4, 8])
        value = rng.choice(INTERESTING_INTS) % (1 << (8 * width))
        i = rng.randrange(len(data))
        data[i:i + width] = value.to_bytes(width, rng.choice(["big", "little"]))
    elif op == 2 and data:  # delete a chunk
        i = rng.randrange(len(data))
        del data[i:i + rng.randint(1, 32)]
    elif op == 3:  # insert random bytes
        i = rng.randint(0, len(data))
        data[i:i] = rng.randbytes(rng.randint(1, 32))
    elif op == 4 and data:  # duplicate a chunk
        i = rng.randrange(len(data))
        chunk = data[i:i + rng.randint(1, 64)]
        data[i:i] = chunk * rng.randint(1, 8)
    elif op == 5:  # splice with another corpus member
        other = rng.choice(corpus)
        cut = rng.randint(0, len(data))
        data = data[:cut] + other[rng.randint(0, len(other)):]
    else:  # truncate
        data = data[:rng.randint(0, len(data))]
    return data


def _mutate_tree(rng: random.Random, node: object) -> object:
    """Replace, drop or add one node somewhere in a decoded msgpack value."""
    if isinstance(node, dict) and node and rng.random() < 0.7:
        key = rng.choice(list(node))
        roll = rng.random()
        if roll < 0.15:
            node.pop(key)
        elif roll < 0.25:
            node[rng.choice(["x", key + "_", ""])] = rng.choice(INTERESTING_VALUES)
        else:
            node[key] = _mutate_tree(rng, node[key])
        return node
    if isinstance(node, list) and node and rng.random() < 0.7:
        i = rng.randrange(len(node))
        roll = rng.random()
        if roll < 0.1:
            node.pop(i)
        elif roll < 0.2:
            node.insert(i, rng.choice(INTERESTING_VALUES))
        elif roll < 0.25:
            node.extend(node[i:i + 1] * rng.randint(1, 50))
        else:
            node[i] = _mutate_tree(rng, node[i])
        return node
    return rng.choice(INTERESTING_VALUES)


def _mutate_msgpack(rng: random.Random, data: bytes) -> bytes | None:
    """msgpack-aware edit of the payload after the variant byte (None when not msgpack)."""
    if len(data) < 2:
        return None
    for skip in (1, 0):
        try:
            tree = msgpack.unpackb(data[skip:], raw=False, strict_map_key=False)
        except Exception:  # noqa: BLE001 -- not msgpack at this offset; try the other
            continue
        try:
            return data[:skip] + msgpack.packb(_mutate_tree(rng, tree), use_bin_type=True)
        except (TypeError, ValueError, OverflowError):
            return None
    return None


def mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    out = None
    if rng.random() < 0.4:
        out = _mutate_msgpack(rng, data)
    if out is None:
        out = bytes(_mutate_bytes(rng, bytearray(data), corpus))
        if rng.random() < 0.05 and out:  # sometimes change the variant byte
            out = bytes([rng.randrange(256)]) + out[1:]
    return out[:MAX_INPUT_BYTES]


def fuzz(target: Target, *, seed: int, seconds: float, slow_s: float = 1.0,
         max_findings: int = 20) -> FuzzReport:
    rng = random.Random(seed)
    corpus = [s for s in target.seeds()] or [b""]
    seen: set[str] = set()
    report = FuzzReport(target.name)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(report.findings) < max_findings:
        data = mutate(rng, rng.choice(corpus), corpus)
        started = time.monotonic()
        outcome, error = _outcome(target, data)
        took = time.monotonic() - started
        report.runs += 1
        if error is not None or took > slow_s:
            why = f"{type(error).__name__}: {error}" if error is not None else f"slow: {took:.2f}s"
            report.findings.append(Finding(data, why[:300], took))
            continue
        # New outcome: keep it. A few others too, so the corpus keeps drifting.
        if (outcome not in seen or rng.random() < 0.01) and len(corpus) < MAX_CORPUS:
            corpus.append(data)
        seen.add(outcome)
    report.corpus = len(corpus)
    report.outcomes = len(seen)
    return report
