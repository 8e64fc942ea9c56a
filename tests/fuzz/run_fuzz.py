"""Run one fuzz target for a bounded time; save what it finds under corpus/<target>/.

    python tests/fuzz/run_fuzz.py envelope --seconds 60             # seeded mutation fuzzer
    python tests/fuzz/run_fuzz.py record --seconds 60 --atheris     # libFuzzer via atheris

Exit status 0: nothing found; 1: findings (saved with --save, printed either way); 2: usage.
atheris needs its own process (libFuzzer owns it and exits when done), hence this script.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

from fuzz_targets import TARGETS, classify
from mutator import fuzz

CORPUS_DIR = Path(__file__).parent / "corpus"
MAX_SECONDS = 3_600
assert MAX_SECONDS > 0


def save(target: str, data: bytes) -> Path:
    folder = CORPUS_DIR / target
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"finding-{hashlib.sha1(data).hexdigest()[:16]}.bin"
    path.write_bytes(data)
    return path


def run_mutator(args: argparse.Namespace) -> int:
    report = fuzz(TARGETS[args.target], seed=args.seed, seconds=args.seconds)
    print(f"{args.target}: {report.runs} runs, corpus {report.corpus}, outcomes {report.outcomes}, "
          f"findings {len(report.findings)}")
    for finding in report.findings:
        where = save(args.target, finding.data) if args.save else "(not saved)"
        print(f"  {finding.error[:160]} -> {where}")
    return 1 if report.findings else 0


def run_atheris(args: argparse.Namespace) -> int:
    import atheris  # optional: pip install atheris

    target = TARGETS[args.target]

    def one_input(data: bytes) -> None:
        error = classify(target, data)
        if error is not None:
            if args.save:
                print(f"saved {save(args.target, data)}", file=sys.stderr)
            raise error

    # libFuzzer writes the inputs it finds interesting into its corpus folder: a temporary one,
    # so only real findings (saved above) land in the repository.
    seeds_dir = Path(tempfile.mkdtemp(prefix=f"rmqz-atheris-{args.target}-"))
    for i, seed in enumerate(target.seeds()):
        (seeds_dir / f"seed-{i}").write_bytes(seed)
    argv = [sys.argv[0], f"-max_total_time={args.seconds}", f"-seed={args.seed}", "-timeout=5",
            "-rss_limit_mb=2048", "-max_len=65536", str(seeds_dir)]
    atheris.instrument_all()  # coverage feedback over every loaded module (the decoders)
    atheris.Setup(argv, one_input)
    atheris.Fuzz()  # exits the process: 0 when the time is up with nothing found
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--atheris", action="store_true")
    parser.add_argument("--save", action="store_true", help="write findings to corpus/<target>/")
    args = parser.parse_args()
    if not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be in 1..{MAX_SECONDS}")
    return run_atheris(args) if args.atheris else run_mutator(args)


if __name__ == "__main__":
    sys.exit(main())
