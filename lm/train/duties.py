"""What the training loop hands off besides metrics, each saying when it is due: evaluations on the validation
split, and checkpoints (never one after a step that was not finite)."""

import jax

from lm.config import RunConfig
from lm.data import batches as batches_lib
from lm.evaluate import tasks as tasks_lib
from lm.evaluate.loglikelihood import make_token_scores
from lm.evaluate.scoring import evaluate, make_eval_step
from lm.parallel.mesh import Layout
from lm.train.metrics import MetricsLog
from lm.train.startup import Start
from lm.train.state import TrainState


class Evaluations:
    """Validation loss, perplexity and bits per byte every `config.train.eval_every` steps and at the end, with
    the downstream tasks of `config.eval.tasks` (if any) every `config.eval.every` steps of those and at the end.
    Each is logged in the record of its step, written before that step's checkpoint: a resumed run neither loses
    nor repeats one."""

    def __init__(self, run: RunConfig, start: Start, layout: Layout, log: MetricsLog):
        self.every, self.last_step, self.limit = run.train.eval_every, run.train.steps, run.train.eval_batches
        self.batch_size, self.start, self.layout, self.log = run.train.batch_size, start, layout, log
        separator_bytes = len(run.data.separator.encode())
        self.step_fn = make_eval_step(start.model, start.tokenizer.token_bytes(separator_bytes), layout)
        self.evaluated = start.optimizer.evaluated
        self.tasks = tasks_lib.read_tasks(run.eval.tasks, run.eval.examples) if run.eval.tasks else []
        self.tasks_every = run.eval.every or self.every
        self.token_scores = make_token_scores(start.model, layout) if self.tasks else None
        self.encoded = tasks_lib.encode_tasks(start.tokenizer, self.tasks, start.model.config.max_len)

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.last_step or self._tasks_due(step)

    def _tasks_due(self, step: int) -> bool:
        return bool(self.tasks) and (step % self.tasks_every == 0 or step == self.last_step)

    def run(self, step: int, state: TrainState, record: bool = True) -> dict[str, float]:
        """Evaluates the state's parameters to evaluate (lm.optim.eval_params), logs the result (recorded
        unless not `record`) and returns it."""
        params = self.evaluated(state)
        rows = batches_lib.eval_batches(self.start.validation, self.batch_size, jax.process_index(),
                                        jax.process_count(), max_batches=self.limit)  # read as evaluated
        result = evaluate(self.step_fn, params, rows, self.layout)
        tasks = None
        if self._tasks_due(step):
            tasks = tasks_lib.score_tasks(self.token_scores, params, self.tasks, self.encoded,
                                          self.start.model.config.max_len, self.batch_size, self.layout)
        self.log.evaluation(step, result, record, tasks)
        return {**result, **tasks_lib.flat(tasks)} if tasks else result


class Checkpoints:
    """Saves every `config.checkpoint.every` steps and at the end, after the step's finiteness is known; `close`
    waits for the last save to commit."""

    def __init__(self, run: RunConfig, start: Start):
        self.ckpt, self.last_step, self.start = start.checkpointer, run.train.steps, start
        self.evaluated = start.optimizer.evaluated if start.optimizer.apart else None
        self.saved = start.step

    def due(self, step: int) -> bool:
        return self.ckpt.due(step) or step == self.last_step

    def save(self, step: int, state: TrainState, finite: jax.Array) -> None:
        """Saves `step` (once), raising NonFinite instead if that step was not finite."""
        if step == self.saved:
            return
        self.start.guard.observe(step, bool(finite))
        self.start.guard.check()
        data_state = {**self.start.batches.get_state(), "identities": self.start.identities,
                      "nonfinite": self.start.guard.state()}
        eval_params = self.evaluated(state) if self.evaluated else None
        self.ckpt.save(step, state, data_state, self.start.meta, eval_params)
        self.saved = step

    def close(self) -> str:
        """Waits for pending saves and closes; the newest checkpoint, in words."""
        self.ckpt.wait()
        last = self.ckpt.latest_step()
        self.ckpt.close()
        return f"checkpoint {last} is the last good state" if last else "no checkpoint was written before it"
