"""Preparation and loading at scale, on generated corpora: `python experiments/data_at_scale.py --out DIR`.

Generates JSONL corpora of real text (lines of the bundled Shakespeare in a random order) with long documents
(~4,000 characters, ~1,200 BPE tokens) and short ones (~100 characters), of about --small_gb and --large_gb;
prepares each with `python -m lm.prepare` and a 2,000-piece BPE (timing the command, and sampling the resident
memory of its whole process tree); kills one preparation with SIGKILL part way, runs it again and compares the
shards' checksums with an uninterrupted one; and times the training batches read from the prepared shards
(context 1024, batch 32, one process). Prints every figure; nothing is kept but DIR.
"""

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "tiny.py")


def generate(path: str, gigabytes: float, lines_per_doc: int, seed: int = 0) -> None:
    """JSONL files (about 256 MB each) in the folder `path`, of documents of `lines_per_doc` Shakespeare lines."""
    if os.path.exists(os.path.join(path, "done")):
        return
    os.makedirs(path, exist_ok=True)
    from lm.data.sources import bundled_corpus

    lines = [line for line in open(bundled_corpus(), encoding="utf-8").read().split("\n") if line.strip()]
    rng, total, index = np.random.default_rng(seed), int(gigabytes * 1e9), 0
    while total > 0:
        size = 0
        with open(os.path.join(path, f"part-{index:03d}.jsonl"), "w") as f:
            while size < min(total, 256e6):
                picks = rng.integers(0, len(lines), (1000, lines_per_doc))
                chunk = "".join(json.dumps({"text": "\n".join(lines[i] for i in row)}) + "\n" for row in picks)
                f.write(chunk)
                size += len(chunk)
        total -= size
        index += 1
    open(os.path.join(path, "done"), "w").close()


def prepare_command(corpus: str, out: str, cache: str) -> list[str]:
    return [sys.executable, "-m", "lm.prepare", "--config", CONFIG, f"--config.data.path={corpus}",
            f"--config.data.cache_dir={cache}", "--config.tokenizer.type=bpe", "--config.tokenizer.vocab_size=2000",
            "--config.tokenizer.sample_chars=5000000", "--out", out]


def run_measured(cmd: list[str], kill_after: float = 0.0) -> tuple[float, float, str]:
    """(seconds, peak resident GB of the process and its children together, stdout) of a command; killed with
    SIGKILL (its whole group) after `kill_after` seconds if that is > 0."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    peak, out = [0], []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
    reader.start()
    me = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [me, *me.children(recursive=True)])
            peak[0] = max(peak[0], rss)
        except psutil.Error:
            pass
        if kill_after and time.perf_counter() - start > kill_after:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    proc.wait()
    reader.join()
    return time.perf_counter() - start, peak[0] / 1e9, "".join(out)


def checksums(folder: str) -> dict[str, str]:
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            if name.endswith(".npy") or name == "manifest.json":
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def loader(folder: str, seconds: float = 5.0) -> float:
    """Tokens/s of training batches (context 1024, batch 32) from a prepared folder, in this process."""
    from lm.bench.data import loader_speed
    from lm.data.config import DataConfig
    from lm.data.shards import Prepared

    d = DataConfig(path=folder, ahead=0)
    return loader_speed(d, Prepared.open(folder, None).tokenizer(), 1025, 32, seconds)["tokens_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--small_gb", type=float, default=0.5)
    parser.add_argument("--large_gb", type=float, default=2.0)
    args = parser.parse_args()
    cache = os.path.join(args.out, "cache")
    figures = {}
    for name, lines in (("long", 120), ("short", 3)):
        for size in (args.small_gb, args.large_gb) if name == "long" else (args.small_gb,):
            corpus = os.path.join(args.out, f"{name}-{size:g}gb")
            generate(corpus, size, lines)
            out = corpus + ".prepared"
            seconds, peak, log = run_measured(prepare_command(corpus, out, cache))
            rate = [line for line in log.splitlines() if line.startswith("prepared")]
            print(f"{name} documents, {size:g} GB: lm.prepare {seconds:.0f} s, peak resident {peak:.2f} GB; "
                  f"{rate[-1] if rate else log[-2000:]}", flush=True)
            figures[(name, size)] = out
    long_small = figures[("long", args.small_gb)]
    killed = long_small + ".killed"
    cmd = prepare_command(long_small[:-len(".prepared")], killed, cache)
    first, _, _ = run_measured(cmd, kill_after=25.0)
    records = os.path.join(killed, "tasks")
    done = len([n for n in os.listdir(records) if n.endswith(".json")]) if os.path.isdir(records) else 0
    run_measured(cmd)
    same = checksums(killed) == checksums(long_small)
    print(f"SIGKILL after {first:.0f} s ({done} tasks done), then the same command: shards and manifest "
          f"{'identical' if same else 'DIFFERENT'} ({len(checksums(killed))} files)", flush=True)
    for name in ("long", "short"):
        rate = loader(figures[(name, args.small_gb)])
        print(f"training batches from prepared shards, {name} documents (context 1024, batch 32, one process): "
              f"{rate:,.0f} tokens/s", flush=True)


if __name__ == "__main__":
    main()
