"""Downstream-task scoring speed: examples per second when every request of every task is packed into full
batches (lm.evaluate's way) against one forward pass per example (each example's requests alone in a batch),
the same model and tokens both ways; the compile of each batch shape is left out of the timing."""

import time
from typing import Any

from lm import config as config_lib
from lm.backends import select
from lm.config import RunConfig
from lm.data import corpus
from lm.evaluate import tasks as tasks_lib
from lm.evaluate.loglikelihood import make_token_scores, score_encoded
from lm.parallel import placement
from lm.parallel.mesh import make_layout


def measure(cfg: RunConfig, spec: str, examples: int) -> dict[str, Any]:
    """Both speeds for the config's model (random weights, the run's tokenizer) on the first `examples` of each
    task `spec` names."""
    tokenizer = corpus.fresh_tokenizer(cfg.data, cfg.tokenizer)
    c = config_lib.model_config(cfg, tokenizer.vocab_size)
    layout = make_layout(cfg.mesh)
    model = select.model(c)
    params = placement.init_params(model, layout, cfg.seed)
    token_scores = make_token_scores(model, layout)
    tasks = tasks_lib.read_tasks(spec, examples)
    encoded = tasks_lib.encode_tasks(tokenizer, tasks, c.max_len)
    per_example = [len(e) for t in tasks for e in _example_requests(t)]
    batch = cfg.train.batch_size
    one = layout.data_parallel * -(-max(per_example) // layout.data_parallel)  # rows for the largest example

    def batched() -> None:
        score_encoded(token_scores, params, encoded, c.max_len, batch, layout)

    def singly() -> None:
        first = 0
        for n in per_example:
            score_encoded(token_scores, params, encoded[first:first + n], c.max_len, one, layout)
            first += n

    for rows in (batch, one):  # compile both batch shapes first
        score_encoded(token_scores, params, encoded[:per_example[0]], c.max_len, rows, layout)
    packed_s, single_s = _seconds(batched), _seconds(singly)
    n = len(per_example)
    return {"examples": n, "requests": len(encoded), "tasks": len(tasks), "batch": batch, "row": c.max_len + 1,
            "batched_per_s": n / packed_s, "single_per_s": n / single_s, "one_batch": one}


def _seconds(fn: Any) -> float:
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def _example_requests(task: tasks_lib.Task) -> list[list[tuple[str, str]]]:
    return [tasks_lib.Task(task.name, task.format, (e,)).requests() for e in task.examples]


def report(r: dict[str, Any]) -> None:
    print(f"scoring {r['examples']:,} examples ({r['requests']:,} requests) of {r['tasks']} task(s):")
    print(f"  batched, packed into {r['batch']} rows of {r['row']} tokens  {r['batched_per_s']:10,.1f} examples/s")
    print(f"  one example at a time ({r['one_batch']} rows)           {r['single_per_s']:10,.1f} examples/s")
    print(f"ratio batched / one at a time: {r['batched_per_s'] / r['single_per_s']:.1f}x")
