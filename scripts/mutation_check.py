#!/usr/bin/env python3
"""Mutation check: does the test suite notice when the code is wrong?

Copies the working tree (tracked and untracked, not ignored files) to a temporary
directory, then for each mutation in scripts/mutations.py replaces one exact string
in one file of the copy, runs that mutation's tests there (pytest -x), and puts the
file back. A mutation is

    caught     the tests fail (what we want),
    SURVIVED   the tests pass with the code wrong,
    stale      the string is not in the file exactly once (update the list),
    error      pytest could not run the tests (collection error, no tests, timeout).

First each mutation's tests run on the unmutated copy: a mutation only counts as
caught if its tests pass without it. Slow (minutes per service
mutation), so not part of CI. Usage:

    python3 scripts/mutation_check.py                 # every mutation
    python3 scripts/mutation_check.py --only convcore # names containing "convcore"
    python3 scripts/mutation_check.py --list          # names and tests, nothing run

Exit status 0 when every selected mutation is caught, else 1.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_mutations(path: Path) -> list:
    spec = importlib.util.spec_from_file_location("mutations", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutations"] = module          # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.MUTATIONS


def copy_tree(dest: Path) -> None:
    """The working tree as git sees it (edits and new files included, ignored files not)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():                    # deleted-but-tracked files are listed too
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def run_pytest(copy: Path, args: list, seed: int, timeout: float) -> tuple:
    """(exit status or 'timeout', seconds, failing test ids) of pytest in the copy."""
    env = dict(os.environ, PYTHONPATH=str(copy), HYPOTHESIS_SEED=str(seed),
               PYTHONDONTWRITEBYTECODE="1")   # no .pyc: a restored file must never meet a stale one
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rf", *args]
    start = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - start, []
    failed = [line.split(" ", 1)[1].split(" - ")[0] for line in done.stdout.splitlines()
              if line.startswith(("FAILED ", "ERROR "))]
    tail = done.stdout.strip().splitlines()[-1:] if done.returncode not in (0, 1) else []
    return done.returncode, time.monotonic() - start, failed or tail


def check_imports_copy(copy: Path) -> None:
    """The copy's packages, not the editable install's, must be the ones imported."""
    out = subprocess.run([sys.executable, "-c", "import convcore, worker, app; "
                          "print(convcore.__file__, worker.__file__, app.__file__)"],
                         cwd=copy, env=dict(os.environ, PYTHONPATH=str(copy)),
                         capture_output=True, text=True, check=True).stdout
    if any(not path.startswith(str(copy)) for path in out.split()):
        sys.exit(f"the copy imports packages from elsewhere: {out}")


def apply(copy: Path, mutation) -> tuple:
    """Mutate the file in the copy: (its original text or None, times the string was found)."""
    path = copy / mutation.file
    text = path.read_text() if path.is_file() else ""
    found = text.count(mutation.old)
    if found != 1:
        return None, found
    path.write_text(text.replace(mutation.old, mutation.new))
    return text, found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mutations", type=Path, default=ROOT / "scripts" / "mutations.py")
    parser.add_argument("--only", action="append", default=[], help="run mutations whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the mutations and their tests")
    parser.add_argument("--seed", type=int, default=None, help="HYPOTHESIS_SEED for every run (default: random)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run without mutations")
    args = parser.parse_args()

    mutations = [m for m in load_mutations(args.mutations)
                 if not args.only or any(word in m.name for word in args.only)]
    if args.list:
        for m in mutations:
            print(f"{m.name}\n    {m.file}: {m.why}\n    tests: {' '.join(m.tests)}")
        return 0
    seed = random.SystemRandom().randrange(2**32) if args.seed is None else args.seed
    print(f"{len(mutations)} mutations, HYPOTHESIS_SEED={seed}", flush=True)

    with tempfile.TemporaryDirectory(prefix="convnd-mutants-") as tmp:
        copy = Path(tmp)
        copy_tree(copy)
        check_imports_copy(copy)
        if not args.no_baseline:
            for tests in dict.fromkeys(m.tests for m in mutations):
                status, seconds, failed = run_pytest(copy, list(tests), seed, args.timeout)
                print(f"baseline  {seconds:6.0f} s  {' '.join(tests)}: pytest exit {status}", flush=True)
                if status != 0:
                    print("these tests fail without any mutation; fix that first:", *failed, sep="\n  ")
                    return 1
        results = []
        for m in mutations:
            original, found = apply(copy, m)
            if original is None:
                results.append((m, "stale", 0.0, [f"the string occurs {found} times in {m.file}, not once"]))
            else:
                try:
                    status, seconds, failed = run_pytest(copy, m.tests, seed, args.timeout)
                finally:
                    (copy / m.file).write_text(original)
                verdict = {0: "SURVIVED", 1: "caught"}.get(status, "error")
                results.append((m, verdict, seconds, failed))
            _, verdict, seconds, failed = results[-1]
            detail = {"caught": "by ", "stale": ""}.get(verdict, "")
            print(f"{verdict:9s} {seconds:6.0f} s  {m.name}"
                  + (f"\n{'':18s}{detail}{failed[0]}" if failed else ""), flush=True)

    counts = {v: sum(1 for r in results if r[1] == v) for v in ("caught", "SURVIVED", "stale", "error")}
    print(", ".join(f"{n} {v}" for v, n in counts.items()))
    return 0 if counts["caught"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
