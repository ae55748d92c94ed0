"""Memory and time that must not grow with the input: `python experiments/bounded_memory.py --out DIR`.

Three commands a user waits for, each timed whole and its resident memory sampled over its whole process tree
(data_at_scale.run_measured):
- `lm.prepare` of one line of text (no document separator anywhere) of --text_mb megabytes: the bundled
  Shakespeare's words in a random order, joined by spaces;
- `lm.evaluate --tasks` on a task file of --task_mb megabytes of minimal pairs: BLiMP's pairs (../shared/data)
  repeated, scored by a tiny model trained here on the prepared line (one document in 16 MB: its samples
  almost never end at an end-of-text id);
- `lm.sample --max_new_tokens N` with and without `--stop` at a text that first appears ~62% of the way in.
Prints every figure; nothing is kept but DIR.
"""

import argparse
import glob
import json
import os
import subprocess
import sys

import numpy as np
from data_at_scale import run_measured

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "tiny.py")
BLIMP = os.path.join(os.path.dirname(ROOT), "shared", "data", "blimp")


def one_line(path: str, megabytes: float) -> None:
    """A single line of Shakespeare's words in a random order, `megabytes` long."""
    if os.path.exists(path):
        return
    from lm.data.sources import bundled_corpus

    words = open(bundled_corpus(), encoding="utf-8").read().split()
    rng, left = np.random.default_rng(0), int(megabytes * 1e6)
    with open(path, "w") as f:
        while left > 0:
            chunk = " ".join(words[i] for i in rng.integers(0, len(words), 100_000)) + " "
            f.write(chunk[:left])
            left -= len(chunk)


def task_file(path: str, megabytes: float) -> int:
    """BLiMP's minimal pairs, repeated to `megabytes`; returns the number of pairs."""
    rows = [json.dumps({k: e[k] for k in ("sentence_good", "sentence_bad")}) + "\n"
            for f in sorted(glob.glob(os.path.join(BLIMP, "*.jsonl"))) for e in map(json.loads, open(f))]
    block = "".join(rows)
    copies = max(1, -int(-megabytes * 1e6 // len(block)))  # at least `megabytes`
    if not os.path.exists(path):
        with open(path, "w") as f:
            for _ in range(copies):
                f.write(block)
    return copies * len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--text_mb", type=float, default=200)
    parser.add_argument("--task_mb", type=float, default=150)
    parser.add_argument("--sample_tokens", type=int, default=100_000)
    parser.add_argument("--batch_size", type=int, default=256, help="rows per scoring batch")
    a = parser.parse_args()
    os.makedirs(a.out, exist_ok=True)
    cache = os.path.join(a.out, "cache")

    text = os.path.join(a.out, "one_line.txt")
    one_line(text, a.text_mb)
    prepared = os.path.join(a.out, "prepared")
    subprocess.run(["rm", "-rf", prepared], check=True)
    seconds, peak, out = run_measured([sys.executable, "-m", "lm.prepare", "--config", CONFIG,
                                       f"--config.data.path={text}", f"--config.data.cache_dir={cache}", "--out",
                                       prepared])
    print(f"lm.prepare of one {os.path.getsize(text) / 1e6:.0f} MB line: {seconds:.1f} s, peak resident "
          f"{peak:.2f} GB (process tree)\n  {out.strip().splitlines()[-1]}")

    run = os.path.join(a.out, "run")
    if not os.path.exists(os.path.join(run, "summary.json")):
        subprocess.run([sys.executable, "-m", "lm.train", "--config", CONFIG, "--workdir", run,
                        f"--config.data.path={prepared}", "--config.train.steps=200"], cwd=ROOT, check=True,
                       capture_output=True)
    tasks = os.path.join(a.out, "blimp_repeated.jsonl")
    pairs = task_file(tasks, a.task_mb)
    seconds, peak, out = run_measured([sys.executable, "-m", "lm.evaluate", "--workdir", run, "--tasks", tasks,
                                       "--batch_size", str(a.batch_size)])
    result = json.loads(out.strip().splitlines()[-1])["tasks"]["blimp_repeated"]
    print(f"lm.evaluate --tasks of {os.path.getsize(tasks) / 1e6:.0f} MB ({pairs:,} pairs): {seconds:.1f} s, peak "
          f"resident {peak:.2f} GB; acc {result['acc']:.4f} over {result['examples']:,} examples")

    sample = [sys.executable, "-m", "lm.sample", "--workdir", run, "--max_new_tokens", str(a.sample_tokens),
              "--temperature", "1.0", "--seed", "1", "--format", "jsonl"]
    free_s, _, out = run_measured(sample)
    free = json.loads(out.strip().splitlines()[-1])
    whole = free["sample"]
    assert free["stop_reason"] == "length", free["stop_reason"]
    at = next(i for i in range(int(len(whole) * 0.62), len(whole)) if whole.find(whole[i:i + 12]) == i)
    stop_s, _, out = run_measured([*sample, "--stop", whole[at:at + 12]])
    cut = json.loads(out.strip().splitlines()[-1])
    assert cut["stop_reason"] == "stop" and cut["sample"] == whole[:at], cut["stop_reason"]
    print(f"lm.sample of {a.sample_tokens:,} tokens: {free_s:.1f} s; with --stop at character {at:,} "
          f"({cut['tokens']:,} tokens): {stop_s:.1f} s ({stop_s / free_s:.2f}x)")


if __name__ == "__main__":
    main()
