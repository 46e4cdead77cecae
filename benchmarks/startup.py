"""Start-up of the `mmib` command: time to the first output record on the samples, and time to a usage error.

Each case runs `python -m mmib_cli ...` in a fresh process (what a user's shell does) for the current tree and,
with `--before DIR`, for another source tree (an older commit: `git archive COMMIT | tar -x -C DIR`), alternating
which goes first in each repetition; medians are reported, with whether torch was imported before the process
ended. Also `--importtime` prints the slowest imports of one run (python -X importtime).

    python benchmarks/startup.py --repeat 5 --before /tmp/mmib-before

Cases (all on a copy of samples/ in a temporary folder):
  first-record   `annotate samples/posts.jsonl -o -`: seconds to the first line on stdout (and to the end)
  output-exists  `annotate ... -o out.jsonl` with out.jsonl present: exit 2
  misspelt-model `annotate ... -m mmib-defualt`: exit 1
  missing-folder `annotate ... -o nowhere/out.jsonl`: exit 1
  json-array     `annotate posts.json` holding a JSON array (wrong format): exit 2 on a tree that sniffs the input
  help           `annotate --help`
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES_PROBE = ("import runpy, sys\nsys.argv = ['mmib'] + sys.argv[1:]\ntry:\n    runpy.run_module('mmib_cli', "
                 "run_name='__main__')\nfinally:\n    sys.stderr.write('\\nTORCH_IMPORTED=%s\\n' % ('torch' in "
                 "sys.modules))\n")

CASES = {
    "first-record": ["annotate", "samples/posts.jsonl", "-o", "-"],
    "output-exists": ["annotate", "samples/posts.jsonl", "-o", "exists.jsonl"],
    "misspelt-model": ["annotate", "samples/posts.jsonl", "-o", "new.jsonl", "-m", "mmib-defualt"],
    "missing-folder": ["annotate", "samples/posts.jsonl", "-o", "nowhere/out.jsonl"],
    "json-array": ["annotate", "posts.json", "-o", "new.jsonl"],
    "help": ["annotate", "--help"],
}


def _workdir() -> Path:
    work = Path(tempfile.mkdtemp(prefix="mmib-startup-"))
    shutil.copytree(ROOT / "samples", work / "samples")
    (work / "exists.jsonl").write_text("")
    posts = [json.loads(line) for line in (ROOT / "samples" / "posts.jsonl").read_text().splitlines() if line]
    (work / "posts.json").write_text(json.dumps(posts))
    return work


def run_case(src: Path, args: list[str], work: Path) -> dict[str, object]:
    """One fresh process: seconds to the first stdout line (first-record) or to exit, exit code, torch imported."""
    env = dict(os.environ, PYTHONPATH=str(src), HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", MODULES_PROBE, *args], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    first = proc.stdout.readline() if args[-1] == "-" else b""
    to_first = time.perf_counter() - started
    proc.stdout.read()
    stderr = proc.communicate()[1].decode(errors="replace")
    total = time.perf_counter() - started
    return {"first": to_first if first else None, "total": total, "code": proc.returncode,
            "torch": "TORCH_IMPORTED=True" in stderr}


def importtime(src: Path, args: list[str], work: Path, top: int = 12) -> list[tuple[int, str]]:
    """The `top` slowest imports (cumulative microseconds, module) of one run."""
    env = dict(os.environ, PYTHONPATH=str(src), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "mmib_cli", *args], cwd=work, env=env,
                          capture_output=True, text=True)
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|")
            if cumulative.strip().isdigit() and not name[1:].startswith(" "):  # top-level imports only
                rows.append((int(cumulative), name.strip()))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="repetitions per case and tree (medians reported)")
    parser.add_argument("--before", type=Path, default=None, help="another source tree to compare (an older commit)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated cases")
    parser.add_argument("--importtime", action="store_true", help="also list the slowest imports of first-record")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    trees = {"after": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    work = _workdir()
    results: dict[str, dict[str, list[dict[str, object]]]] = {}
    try:
        for case in args.cases.split(","):
            for rep in range(args.repeat):
                order = list(trees) if rep % 2 == 0 else list(reversed(trees))  # alternate which runs first
                for name in order:
                    for leftover in ("new.jsonl", "new.jsonl.lock"):
                        (work / leftover).unlink(missing_ok=True)
                    result = run_case(trees[name], CASES[case], work)
                    results.setdefault(case, {}).setdefault(name, []).append(result)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, OMP_NUM_THREADS="
              f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, {args.repeat} runs per case and tree (medians)")
        print(f"{'case':<16}{'tree':<8}{'exit':>5}{'torch':>7}{'first record s':>16}{'process s':>11}")
        for case, by_tree in results.items():
            for name, runs in by_tree.items():
                firsts = [r["first"] for r in runs if r["first"] is not None]
                first = f"{statistics.median(firsts):.2f}" if firsts else "-"
                codes = sorted({r["code"] for r in runs})
                torch = "yes" if any(r["torch"] for r in runs) else "no"
                print(f"{case:<16}{name:<8}{'/'.join(map(str, codes)):>5}{torch:>7}{first:>16}"
                      f"{statistics.median(r['total'] for r in runs):>11.2f}")
        if args.importtime:
            for name, src in trees.items():
                print(f"\nslowest top-level imports, first-record, {name}:")
                for micro, module in importtime(src, CASES["first-record"], work):
                    print(f"  {micro / 1e6:6.2f} s  {module}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
