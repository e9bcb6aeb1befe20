"""Fuzz every input surface for longer: atheris (libFuzzer, coverage-guided) per surface,
with plain random bytes for the same time as the peer.

    .venv/bin/python bench/fuzz.py [--seconds S] [--surface NAME ...] [--out FILE]

Per surface it prints inputs tried, distinct failures (exception type and the agent's
frame it came from), coverage features libFuzzer reached, and time. A failure is what
tests/fuzzing.py calls one: an exception that is not the surface's own refusal. Each
surface runs in its own process (libFuzzer exits when it is done).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def failure_id(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/agent/" in f.filename]
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    return f"{type(exc).__name__} at {where}"


def child(surface: str, mode: str, seconds: float, corpus: Path, out: Path) -> None:
    """Runs in its own process: fuzz one surface, write the counts to ``out``."""
    import logging
    logging.disable(logging.CRITICAL)  # refusals log warnings: millions of lines
    import atheris

    with atheris.instrument_imports(include=["agent", "yaml"]):
        from tests.fuzzing import Rig, seeds
    rig = Rig(corpus.parent)  # inside the parent's work dir: libFuzzer's exit() skips cleanup
    target = next(s for s in rig.surfaces() if s.name == surface)
    counts = {"inputs": 0, "failures": {}, "seconds": 0.0}
    examples: dict[str, str] = {}
    t0 = time.monotonic()

    last = [t0]

    def one(data: bytes) -> None:
        counts["inputs"] += 1
        now = time.monotonic()
        if now - last[0] > 0.5:  # libFuzzer ends the process with exit(): no atexit
            last[0] = now
            save()
        try:
            target.run(data)
        except target.refusals:
            pass
        except Exception as exc:  # counted, not raised: the run goes on to find more
            fid = failure_id(exc)
            counts["failures"][fid] = counts["failures"].get(fid, 0) + 1
            examples.setdefault(fid, data[:200].hex())

    def save() -> None:
        counts["seconds"] = time.monotonic() - t0
        out.write_text(json.dumps({**counts, "examples": examples}))

    corpus.mkdir(parents=True, exist_ok=True)
    if mode == "random":
        rng = random.Random(1)
        while time.monotonic() - t0 < seconds:
            one(rng.randbytes(rng.randint(0, 4096)))
        save()
        return
    for i, seed in enumerate(seeds()[surface]):
        (corpus / f"seed-{i}").write_bytes(seed)
    atheris.Setup([sys.argv[0], f"-max_total_time={int(seconds)}", "-max_len=8192",
                   "-print_final_stats=1", str(corpus)], one)
    atheris.Fuzz()


def run_surface(surface: str, mode: str, seconds: float, work: Path) -> dict:
    out = work / f"{surface}-{mode}.json"
    proc = subprocess.run([sys.executable, __file__, "--child", surface, "--mode", mode,
                           "--seconds", str(seconds), "--corpus", str(work / surface),
                           "--result", str(out)], capture_output=True, text=True,
                          timeout=seconds * 3 + 120, check=False, cwd=REPO)
    got = json.loads(out.read_text()) if out.exists() else {"inputs": 0, "failures": {
        f"runner exited {proc.returncode}": 1}, "seconds": 0.0}
    cov = re.findall(r"cov: (\d+) ft: (\d+)", proc.stderr)
    got["cov"], got["ft"] = (int(cov[-1][0]), int(cov[-1][1])) if cov else (None, None)
    return got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--surface", action="append")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child")
    ap.add_argument("--mode", default="atheris")
    ap.add_argument("--corpus", type=Path)
    ap.add_argument("--result", type=Path)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.mode, args.seconds, args.corpus, args.result)
        return
    from tests.fuzzing import seeds
    names = args.surface or list(seeds())
    rows = {}
    with tempfile.TemporaryDirectory(prefix="sortie-fuzz-", dir="/dev/shm"
                                     if os.path.isdir("/dev/shm") else None) as tmp:
        print(f"{'surface':18} {'mode':8} {'inputs':>9} {'per s':>7} {'cov':>5} {'ft':>6} "
              f"{'failures':>8}  seconds")
        for name in names:
            for mode in ("atheris", "random"):
                r = run_surface(name, mode, args.seconds, Path(tmp))
                rows[f"{name}/{mode}"] = r
                per_s = r["inputs"] / r["seconds"] if r["seconds"] else 0
                print(f"{name:18} {mode:8} {r['inputs']:>9} {per_s:>7.0f} "
                      f"{r['cov'] if r['cov'] is not None else '-':>5} "
                      f"{r['ft'] if r['ft'] is not None else '-':>6} "
                      f"{len(r['failures']):>8}  {r['seconds']:.0f}", flush=True)
                for fid, n in r["failures"].items():
                    print(f"    {n} x {fid}: {r.get('examples', {}).get(fid, '')[:80]}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
