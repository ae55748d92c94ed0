"""Input-pipeline speed (`python -m lm.bench --config X --data`): tokens/s that the data pipeline alone delivers
(read, tokenize, pack, batch: `lm.data.batches.TrainBatches` on the config's corpus and tokenizer), against the tokens/s
that the config's train step consumes, measured in the same run; and the same pipeline with a BPE tokenizer.

Where the time goes: documents read and decoded from the TFDS data source alone, the tokenizer alone on those
documents, and the rest (grain's shuffling and packing, batching), each as microseconds per document.
"""

import time
from typing import Any

from lm.data.batches import TrainBatches
from lm.data.sources import Corpus
from lm.tokenizer.kinds import AnyTokenizer


def _rate(fn: Any, seconds: float) -> tuple[float, int]:
    """(calls per second, calls) of `fn` over about `seconds` (after one warm-up call)."""
    fn()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return calls / (time.perf_counter() - start), calls


def pipeline(corpus: Corpus, tok: AnyTokenizer, row_len: int, batch: int,
             seconds: float = 3.0) -> dict[str, float]:
    """Tokens/s of the training batches, and microseconds per document of reading, tokenizing and the rest."""
    batches = TrainBatches(corpus, tok, row_len, batch, seed=0)
    per_s, _ = _rate(lambda: next(batches), seconds)
    docs = corpus.documents("train")
    n = min(len(docs), 2000)
    start = time.perf_counter()
    texts = [(d["prompt"] + d["text"]).decode("utf-8") for d in (docs[i] for i in range(n))]
    read = (time.perf_counter() - start) / n
    start = time.perf_counter()
    tokens = sum(len(tok.encode(t)) + 2 for t in texts)
    encode = (time.perf_counter() - start) / n
    tokens_per_s = per_s * batch * row_len
    docs_per_s = tokens_per_s / (tokens / n)
    return {"tokens_per_s": tokens_per_s, "read_us": read * 1e6, "tokenize_us": encode * 1e6,
            "rest_us": max(1e6 / docs_per_s - (read + encode) * 1e6, 0.0), "tokens_per_doc": tokens / n}


def report(name: str, r: dict[str, float]) -> None:
    total = r["read_us"] + r["tokenize_us"] + r["rest_us"]
    print(f"  {name:28s} {r['tokens_per_s']:>12,.0f} tokens/s | per document ({r['tokens_per_doc']:.0f} tokens): "
          f"read {r['read_us']:.0f} us ({r['read_us'] / total:.0%}), tokenize {r['tokenize_us']:.0f} us "
          f"({r['tokenize_us'] / total:.0%}), shuffle+pack+batch {r['rest_us']:.0f} us ({r['rest_us'] / total:.0%})")
