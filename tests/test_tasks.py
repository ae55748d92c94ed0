"""Downstream tasks: the GPT-2 of tests/fixtures/gpt2_bpe, imported, scores minimal pairs (real BLiMP pairs),
multiple choice and cloze requests packed many to a row exactly as `transformers` scored each alone from its own
logits (tests/fixtures/tasks, made by tests/fixtures/make_task_fixture.py); bad task files are one line each."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import USER_ENV, start_training, train_command

from lm.backends import select
from lm.checkpoint import reader
from lm.convert.hf import import_hf
from lm.errors import UserError
from lm.evaluate import tasks as tasks_lib
from lm.evaluate.loglikelihood import make_token_scores, score_pairs
from lm.parallel import mesh as shd
from lm.parallel import placement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
TASKS = os.path.join(FIXTURES, "tasks")


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("gpt2"))
    import_hf(os.path.join(FIXTURES, "gpt2_bpe"), workdir)
    ckpt, step, c, tok, _ = reader.open_run(workdir)
    layout = shd.make_layout({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    model = select.model(c)
    params = ckpt.params(step, placement.abstract_params(model, layout))
    return workdir, c, tok, layout, make_token_scores(model, layout), params


def _expected():
    with open(os.path.join(TASKS, "expected.json")) as f:
        return json.load(f)["scores"]


def _by_hand(scores):
    """Each task's accuracy from per-request scores, in the order the fixture's tasks list them."""
    it = iter(scores)
    out = {}
    with open(os.path.join(TASKS, "pairs.jsonl")) as f:
        pairs = [json.loads(line) for line in f]
    out["pairs"] = np.mean([next(it)["ll"] > next(it)["ll"] for _ in pairs])
    with open(os.path.join(TASKS, "choice.jsonl")) as f:
        choice = [json.loads(line) for line in f]
    raw, per_char = [], []
    for e in choice:
        got = [next(it) for _ in e["choices"]]
        raw.append(np.argmax([g["ll"] for g in got]) == e["answer"])
        per_char.append(np.argmax([g["ll"] / len(c) for g, c in zip(got, e["choices"], strict=True)]) == e["answer"])
    out["choice"], out["choice_char"] = np.mean(raw), np.mean(per_char)
    out["cloze"] = np.mean([s["greedy"] for s in it])
    return out


@pytest.mark.parametrize("batch_size", [1, 4])
def test_packed_scores_are_those_transformers_gives_each_request_alone(gpt2, batch_size):
    _, c, tok, layout, token_scores, params = gpt2
    want = _expected()
    tasks = [tasks_lib.read_task(os.path.join(TASKS, f"{n}.jsonl")) for n in ("pairs", "choice", "cloze")]
    pairs = [r for t in tasks for r in t.requests()]
    assert len(pairs) == len(want) == 2 * 24 + 4 * 12 + 14
    got = score_pairs(token_scores, params, tok, pairs, c.max_len, batch_size, layout)
    lls = np.array([g[0] for g in got])
    print(f"max |lm - transformers| summed log-likelihood {np.abs(lls - [w['ll'] for w in want]).max():.1e}")
    np.testing.assert_allclose(lls, [w["ll"] for w in want], atol=1e-4, rtol=0)
    assert [g[1] for g in got] == [w["greedy"] for w in want] and sum(g[1] for g in got) == 4
    assert [g[2] for g in got] == [w["tokens"] for w in want]
    hand = _by_hand(want)
    encoded = tasks_lib.encode_tasks(tok, tasks, c.max_len)
    scored = tasks_lib.score_tasks(token_scores, params, tasks, encoded, c.max_len, batch_size, layout)["tasks"]
    assert scored["pairs"]["acc"] == hand["pairs"] and scored["choice"]["acc"] == hand["choice"]
    assert scored["choice"]["acc_char"] == hand["choice_char"] and scored["cloze"]["acc"] == hand["cloze"] == 4 / 14


def test_evaluate_scores_task_files_and_prints_one_json_line(gpt2):
    workdir = gpt2[0]
    done = subprocess.run([sys.executable, "-m", "lm.evaluate", "--workdir", workdir, "--tasks",
                           f"{TASKS}/pairs.jsonl,{TASKS}/choice.jsonl", "--batch_size", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    hand = _by_hand(_expected())
    assert result["step"] == 0 and result["tasks"]["pairs"]["acc"] == hand["pairs"]
    assert result["tasks"]["choice"]["examples"] == 12 and result["tasks"]["choice"]["acc"] == hand["choice"]
    assert result["mean_acc"] == pytest.approx((hand["pairs"] + hand["choice"]) / 2)
    # Imported weights hold no data settings: their loss needs text named on the command line.
    done = subprocess.run([sys.executable, "-m", "lm.evaluate", "--workdir", workdir], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"error: {workdir} holds imported weights and no data of its own; give --data_path (text to score) or --tasks"]


def _fails(tmp_path, lines, match):
    path = tmp_path / "task.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(UserError, match=match) as e:
        tasks_lib.read_task(str(path))
    assert "\n" not in str(e.value)


def test_bad_task_files_are_one_line_each(tmp_path, gpt2):
    good = json.dumps({"context": "a", "choices": [" b", " c"], "answer": 1})
    _fails(tmp_path, [good, json.dumps({"context": "a", "options": [" b"], "answer": 0})],
           r"task\.jsonl line 2: fields \['answer', 'context', 'options'\] match no task format")
    _fails(tmp_path, [good, json.dumps({"context": "a", "choices": [" b", " c"], "answer": 2})],
           r"line 2: field answer=2 is out of range for 2 choices")
    _fails(tmp_path, [good, '{"context": "a",'], r"line 2: not JSON")
    _fails(tmp_path, [good, json.dumps({"sentence_good": "a", "sentence_bad": "b"})],
           r"line 2: a minimal pair example in a multiple choice file")
    _fails(tmp_path, ["", "  "], r"holds no examples")
    c, tok = gpt2[1], gpt2[2]
    task = tasks_lib.Task("long", "multiple_choice",
                          ({"context": "a", "choices": [" b", " word" * 80], "answer": 0},))
    with pytest.raises(UserError, match=r"a continuation of \d+ tokens .* is longer than the model's context of 64"):
        tasks_lib.encode_tasks(tok, [task], c.max_len)
    with pytest.raises(UserError, match="names no task file"):
        tasks_lib.read_tasks(str(tmp_path / "missing*.jsonl"))


HARNESS_YAML = """task: local_{name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{text}"
doc_to_choice: "{choice}"
doc_to_target: {target}
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def test_the_harness_with_our_adapter_scores_a_local_task_as_our_evaluator_does(gpt2, tmp_path):
    """lm-evaluation-harness reads two tasks defined in local YAML over the fixture's JSON lines (BLiMP's pairs as
    two choices, as the harness's own BLiMP task scores them) and asks our adapter for their log-likelihoods: its
    accuracies are the ones computed by hand from transformers' scores, as our evaluator's are."""
    (tmp_path / "tasks").mkdir()
    for name, text, choice, target in (("choice", "{{context}}", "{{choices}}", "answer"),
                                       ("pairs", "", "{{[sentence_good, sentence_bad]}}", "0")):
        (tmp_path / "tasks" / f"{name}.yaml").write_text(HARNESS_YAML.format(
            name=name, path=os.path.join(TASKS, f"{name}.jsonl"), text=text, choice=choice, target=target))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-m", "lm.evaluate", "--workdir", gpt2[0], "--harness",
                           "local_choice,local_pairs", "--harness_include", str(tmp_path / "tasks")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)["results"]
    hand = _by_hand(_expected())
    print({k: {m: v for m, v in r.items() if m.startswith("acc")} for k, r in results.items()})
    assert results["local_pairs"]["acc,none"] == pytest.approx(hand["pairs"], abs=1e-12)
    assert results["local_choice"]["acc,none"] == pytest.approx(hand["choice"], abs=1e-12)
    assert results["local_choice"]["acc_norm,none"] == pytest.approx(hand["choice_char"], abs=1e-12)


def _evaluations(workdir):
    with open(workdir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    return [r for r in records if "val_loss" in r]


def test_a_run_killed_and_resumed_logs_every_task_evaluation_once_with_an_uninterrupted_runs_values(tmp_path,
                                                                                                    cache_dir):
    """Task scores every 4 steps (validation every 2) and checkpoints every 4; SIGKILL once step 6 is logged and
    checkpoint 4 committed, then the same command again: the evaluations at 2, 4, ..., 12 appear once each, each
    equal to the uninterrupted run's, and summary.json holds the last."""
    tasks = f"{TASKS}/choice.jsonl,{TASKS}/pairs.jsonl"
    overrides = ("--config.train.steps=12", "--config.model.max_len=96", "--config.train.eval_every=2",
                 "--config.checkpoint.every=4", "--config.train.log_every=1", f"--config.eval.tasks={tasks}",
                 "--config.eval.every=4", "--config.eval.examples=8")
    reference = tmp_path / "reference"
    done = subprocess.run(train_command(reference, cache_dir, *overrides), cwd=ROOT, env=USER_ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    want = _evaluations(reference)
    assert [r["step"] for r in want] == [2, 4, 6, 8, 10, 12]
    assert [r["step"] for r in want if "task_mean_acc" in r] == [4, 8, 12]
    assert all(0 <= r["task_choice_acc"] <= 1 and 0 <= r["task_pairs_acc"] <= 1 for r in want if r["step"] % 4 == 0)
    summary = json.load(open(reference / "summary.json"))
    assert summary["final"]["task_mean_acc"] == want[-1]["task_mean_acc"]

    workdir = tmp_path / "killed"
    logged = lambda out: "step      6 |" in out and (workdir / "checkpoints" / "4").is_dir()  # noqa: E731
    proc, cmd, _ = start_training(workdir, cache_dir, logged, *overrides, poll=0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    again = subprocess.run(cmd, cwd=ROOT, env=USER_ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "resuming at step" in again.stdout, again.stderr
    got = _evaluations(workdir)
    assert [r["step"] for r in got] == [2, 4, 6, 8, 10, 12]
    for g, w in zip(got, want, strict=True):
        assert g == w


def test_the_harness_adapter_rolls_long_texts_and_generates_as_transformers_does(gpt2):
    """generate_until writes transformers' own greedy text for the fixture's prompt (kept in
    tests/fixtures/gpt2_bpe/expected.json) and cuts it at a stop string; loglikelihood_rolling of a text three
    contexts long equals the sum of its tokens' log-probabilities, each computed here from the model's logits on the
    window of up to 64 tokens before it, in windows the harness describes (each token predicted once)."""
    from lm_eval.api.instance import Instance

    from lm.evaluate.harness import HarnessLM

    workdir, c, tok, layout, _, params = gpt2
    model = HarnessLM(workdir, batch_size=4)
    with open(os.path.join(FIXTURES, "gpt2_bpe", "expected.json")) as f:
        expected = json.load(f)
    prompt, want = expected["prompt"], expected["greedy_text"]
    asks = [Instance("generate_until", {}, (prompt, {"until": [], "max_gen_toks": 16}), 0),
            Instance("generate_until", {}, (prompt, {"until": [want[6:9]], "max_gen_toks": 16}), 1)]
    assert model.generate_until(asks) == [want, want[:6]]

    with open(os.path.join(ROOT, "lm", "data", "tinyshakespeare.txt"), encoding="utf-8") as f:
        text = f.read()[:400]
    ids = [tok.bos_id, *tok.encode(text)]
    assert len(ids) > 3 * c.max_len
    apply = jax.jit(select.model(c).apply)
    want_ll = 0.0
    for first in range(1, len(ids), c.max_len):  # predict ids[first:last] from the window ending at last - 1
        last = min(first + c.max_len, len(ids))
        window = np.array([ids[max(0, last - c.max_len - 1):last - 1]])
        logits = np.asarray(apply({"params": params}, window, np.arange(window.shape[1])[None], np.ones_like(window)),
                            np.float64)[0]
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        targets = ids[first:last]
        want_ll += sum(logp[len(logp) - len(targets) + k, t] for k, t in enumerate(targets))
    rolled = model.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0),
                                          Instance("loglikelihood_rolling", {}, ("ROMEO:",), 1)])
    assert rolled[0] == pytest.approx(want_ll, abs=1e-3)
    # A minimal pair's sentence longer than the context scores the same way (a whole text's probability).
    assert score_pairs(gpt2[4], params, tok, [("", text)], c.max_len, 4, layout)[0][0] == pytest.approx(rolled[0])
    one_window = model.loglikelihood([Instance("loglikelihood", {}, ("", "ROMEO:"), 0)])[0][0]
    assert rolled[1] == pytest.approx(one_window, abs=1e-5)  # a text shorter than the context: one window


def test_the_shipped_word_order_task_is_read_by_name_and_made_of_the_validation_split():
    """Each example: a line of the corpus's last 10% and, among its choices, the line after it there; the other
    choices are its words in other orders."""
    (task,) = tasks_lib.read_tasks("shakespeare_word_order")
    assert task.name == "shakespeare_word_order" and task.format == "multiple_choice" and len(task.examples) == 200
    with open(os.path.join(ROOT, "lm", "data", "tinyshakespeare.txt"), encoding="utf-8") as f:
        text = f.read()
    validation = text[int(len(text) * 0.9):]
    for e in task.examples:
        real = e["choices"][e["answer"]]
        assert e["context"] + real + "\n" in validation
        assert len(set(e["choices"])) == 4
        assert all(sorted(c.split()) == sorted(real.split()) for c in e["choices"])
