"""EleutherAI's lm-evaluation-harness on a workdir: `HarnessLM`, the harness's model interface over our model,
registered as `lm` (the optional `lm_eval` package: `pip install -e ".[eval]"`).

    python -m lm.evaluate --workdir DIR --harness hellaswag,arc_easy [--harness_include DIR_OF_YAML]

`loglikelihood` scores (context, continuation) pairs with the packed scorer of loglikelihood.py (the harness's
own split of a pair into tokens); `loglikelihood_rolling` scores a whole text in windows of the model's context,
each token predicted once and with as much context as the window allows; `generate_until` decodes greedily with
lm.sample's decoder and cuts at the request's stop strings.
"""

from collections.abc import Sequence
from typing import Any

from lm.backends import select
from lm.checkpoint.reader import read, require_tokenizer
from lm.errors import UserError
from lm.evaluate.loglikelihood import make_token_scores, score_encoded, score_pairs, windows
from lm.parallel.mesh import run_layout
from lm.sample.generate import generate

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as e:  # an optional extra
    raise UserError("lm-evaluation-harness is not installed; pip install -e \".[eval]\" (the lm_eval package)") from e


@register_model("lm")
class HarnessLM(LM):
    """A workdir's checkpoint as a harness model: `HarnessLM(workdir, step=None, batch_size=8)`."""

    def __init__(self, workdir: str, step: int | None = None, batch_size: int = 8, **_: Any) -> None:
        super().__init__()
        self.step, self.params, self.config, tokenizer, run = read(workdir, step, run_layout)
        self.tokenizer = require_tokenizer(tokenizer, workdir)
        self.layout = run_layout(run)
        self.token_scores = make_token_scores(select.model(self.config), self.layout)
        self.batch_size = int(batch_size)
        if self.batch_size % self.layout.data_parallel:
            self.batch_size = self.layout.data_parallel * max(1, self.batch_size // self.layout.data_parallel)

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        scores = score_pairs(self.token_scores, self.params, self.tokenizer, [r.args for r in requests],
                             self.config.max_len, self.batch_size, self.layout)
        return [(ll, greedy) for ll, greedy, _ in scores]

    def loglikelihood_rolling(self, requests: Sequence[Any]) -> list[float]:
        texts = [[self.tokenizer.bos_id, *self.tokenizer.encode(r.args[0])] for r in requests]
        encoded = [windows(ids, 1, self.config.max_len) for ids in texts]
        scores = score_encoded(self.token_scores, self.params, encoded, self.config.max_len, self.batch_size,
                               self.layout)
        return [ll for ll, _, _ in scores]

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        groups: dict[tuple[tuple[str, ...], int], list[int]] = {}
        prompts = []
        for i, request in enumerate(requests):
            context, kwargs = request.args
            until = kwargs.get("until") or []
            until = (until,) if isinstance(until, str) else tuple(until)
            new = int(kwargs.get("max_gen_toks", 256))
            keep = max(1, self.config.max_len - 1 - min(new, self.config.max_len // 2))
            ids = self.tokenizer.encode(context)
            prompts.append(self.tokenizer.decode(ids[-keep:]) if len(ids) > keep else context)  # oldest text goes
            groups.setdefault((until, new), []).append(i)
        out = [""] * len(requests)
        for (until, new), members in groups.items():  # greedy rows do not depend on their batch-mates
            samples = generate(self.params, self.config, self.tokenizer, [prompts[i] for i in members],
                               max_new_tokens=new, temperature=0.0, stop=until)
            for i, sample in zip(members, samples, strict=True):
                out[i] = sample["sample"]
        return out


def run_harness(workdir: str, step: int | None, tasks: str, include: str, batch_size: int,
                limit: int | None = None) -> dict[str, Any]:
    """The harness's results (`results`: per task, its metrics) for comma-separated `tasks` on a workdir."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include or None)
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    unknown = [t for t in names if t not in manager.all_tasks]
    if unknown:
        raise UserError(f"--harness: the harness knows no task {unknown[0]!r}; give a task it lists "
                        "(lm_eval --tasks list) or a YAML folder with --harness_include")
    model = HarnessLM(workdir, step, batch_size)
    results = simple_evaluate(model=model, tasks=names, task_manager=manager, limit=limit, log_samples=False)
    return {"step": model.step, "results": results["results"]}
