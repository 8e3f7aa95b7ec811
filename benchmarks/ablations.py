r"""The paper's ablations at small scale on BSDS500: train, evaluate and tabulate every run.

Runs every entry of configs/sweeps/ablation_cpu.py (configs/ablation_cpu.py plus one change) as
`python -m bitseg_jax.main` (training), then `--mode=eval --eval_setup='64x3[vali]'` (64 BSDS500
validation images, 3 samples each, scored against every annotator) and prints a Markdown table:
per row the mean over seeds and, with two seeds, the spread (half the difference). A run whose
`eval/64x3[vali].json` exists is not run again, so a killed sweep resumes; a failed run is reported
as failed with its log's last line, not dropped. Several drivers may share a workdir (say,
one per core started at different times): each run is locked by the driver that runs it.

Command (from the repo root; about 16 minutes per run and core on a 2-core CPU, two runs at
a time, one per core, so about 2 h 10 min for the 16 runs):

  GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184 \
    python benchmarks/ablations.py --workdir=workdirs/ablations --cpus=0,1
"""

import argparse
import concurrent.futures
import fcntl
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from configs.sweeps import ablation_cpu

SETUP = "64x3[vali]"
# Reported columns: (eval JSON key, header). *_vs_all: mean over annotators; best_*: best one.
COLUMNS = (
    ("ari_vs_all", "ARI"),
    ("hiou_e_vs_all", "IoU (hiou_e)"),
    ("max_ari", "best-of-3 ARI"),
    ("ged_ari", "GED (1-ARI)"),
)


def _run(cmd: list[str], log: pathlib.Path, cpu: int | None) -> int:
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode


def run_one(name: str, overrides: dict, root: pathlib.Path, cpu: int | None) -> dict:
    """Trains and evaluates one run (resuming where it stopped); returns its table entry."""
    seed = overrides["seed"]
    workdir = root / f"{name}_s{seed}"
    workdir.mkdir(parents=True, exist_ok=True)
    result = workdir / "eval" / f"{SETUP}.json"
    entry = {"name": name, "seed": seed, "workdir": str(workdir), "overrides": overrides}
    # A second driver (e.g. started on another core later) skips the run this one holds; the
    # lock goes with the process, so a killed driver leaves none behind.
    with (workdir / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return {**entry, "skipped": "running in another driver"}
        if not result.exists():
            log = workdir / "log.txt"
            flags = [f"--config.{k}={v}" for k, v in overrides.items()]
            base = [sys.executable, "-m", "bitseg_jax.main", f"--workdir={workdir}"]
            t0 = time.time()
            rc = _run([*base, f"--config={ablation_cpu.BASE_CONFIG}", *flags], log, cpu)
            entry["train_s"] = time.time() - t0
            if rc == 0:
                rc = _run([*base, "--mode=eval", f"--eval_setup={SETUP}"], log, cpu)
            if rc != 0:
                last = log.read_text().strip().splitlines()[-1:] or [""]
                return {**entry, "failed": f"exit {rc}: {last[0][:200]}"}
    return {**json.loads(result.read_text()), **entry}  # the run's seed, not the eval's


def _cell(values: list[float]) -> str:
    """Mean +- half the spread of a row's seeds; n/a when none finished."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {(max(values) - min(values)) / 2:.3f}"


def finished(root: pathlib.Path) -> tuple[list[dict], int | None]:
    """The finished runs under `root` (entries as `run_one` returns them) and their budget
    (`total_steps` of their config.json), without running anything."""
    entries, steps = [], None
    for name, overrides in ablation_cpu.named_runs():
        workdir = root / f"{name}_s{overrides['seed']}"
        result = workdir / "eval" / f"{SETUP}.json"
        if result.exists():
            entries.append({**json.loads(result.read_text()), "name": name, **overrides})
            steps = json.loads((workdir / "config.json").read_text())["total_steps"]
    return entries, steps


def table(entries: list[dict], compare: list[dict] | None = None, compare_steps=None) -> str:
    """Markdown: one row per ablation, mean (+- half the seed difference) of each column; with
    `compare` (the finished runs of another budget) a last column of their ARI."""
    headers = [h for _, h in COLUMNS]
    if compare is not None:
        headers.append(f"ARI at {compare_steps:,} steps")
    lines = ["| run | seeds | " + " | ".join(headers) + " |", "|" + "---|" * (len(headers) + 2)]
    for name, _ in ablation_cpu.ABLATIONS:
        rows = [e for e in entries if e["name"] == name]
        done = [e for e in rows if "failed" not in e and "skipped" not in e]
        cells = [_cell([e[key] for e in done if key in e]) for key, _ in COLUMNS]
        if compare is not None:
            cells.append(_cell([e["ari_vs_all"] for e in compare if e["name"] == name]))
        failed = [f"seed {e['seed']} failed ({e['failed']})" for e in rows if "failed" in e]
        seeds = ",".join(str(e["seed"]) for e in done) + (" " + "; ".join(failed) if failed else "")
        lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="Root folder of the runs.")
    parser.add_argument("--only", default="", help="Comma-separated row names (default: all).")
    parser.add_argument(
        "--cpus",
        default="",
        help="Comma-separated CPU cores: one run at a time on each, pinned (default: one run "
        "at a time, unpinned).",
    )
    parser.add_argument(
        "--compare",
        default="",
        help="Root folder of the same runs at another budget: adds a column of their ARI.",
    )
    args = parser.parse_args()
    root = pathlib.Path(args.workdir)
    only = set(filter(None, args.only.split(",")))
    names = [name for name, _ in ablation_cpu.ABLATIONS]
    unknown = only - set(names)
    if unknown:
        raise SystemExit(f"--only: unknown runs {sorted(unknown)}; known: {names}")
    runs = [(n, o) for n, o in ablation_cpu.named_runs() if not only or n in only]
    cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else [None]
    with concurrent.futures.ThreadPoolExecutor(len(cpus)) as pool:
        free = list(cpus)
        futures = {}
        entries = []
        for name, overrides in runs:
            if len(futures) == len(cpus):
                ready, _ = concurrent.futures.wait(
                    futures, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for f in ready:
                    entries.append(f.result())
                    free.append(futures.pop(f))
            cpu = free.pop(0)
            futures[pool.submit(run_one, name, overrides, root, cpu)] = cpu
            print(f"started {name} seed {overrides['seed']} (cpu {cpu})", flush=True)
        entries += [f.result() for f in futures]
    (root / "ablations.json").write_text(json.dumps(entries, indent=2))
    if args.compare:
        print(table(entries, *finished(pathlib.Path(args.compare))))
    else:
        print(table(entries))


if __name__ == "__main__":
    main()
