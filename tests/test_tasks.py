"""Downstream tasks: the GPT-2 of tests/fixtures/gpt2_bpe, imported, scores minimal pairs (real BLiMP pairs),
multiple choice and cloze requests packed many to a row exactly as `transformers` scored each alone from its own
logits (tests/fixtures/tasks, made by tests/fixtures/make_task_fixture.py); bad task files are one line each."""

import json
import math
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import USER_ENV, start_training, train_command
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lm.backends import select
from lm.checkpoint import reader
from lm.convert.hf import import_hf
from lm.errors import UserError
from lm.evaluate import tasks as tasks_lib
from lm.evaluate.loglikelihood import make_token_scores, score_encoded, score_pairs
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
    layout = shd.tensor_layout(1)
    model = select.model(c)
    params = ckpt.params(step, placement.abstract_params(model, layout))
    return workdir, c, tok, layout, make_token_scores(model, layout), params


def _expected():
    with open(os.path.join(TASKS, "expected.json")) as f:
        return json.load(f)["scores"]


def _by_hand(scores, first=None):
    """Each task's accuracy from per-request scores, in the order the fixture's tasks list them; on the `first`
    examples of each task if given."""
    it = iter(scores)
    out = {}
    with open(os.path.join(TASKS, "pairs.jsonl")) as f:
        pairs = [json.loads(line) for line in f]
    out["pairs"] = np.mean([next(it)["ll"] > next(it)["ll"] for _ in pairs][:first])
    with open(os.path.join(TASKS, "choice.jsonl")) as f:
        choice = [json.loads(line) for line in f]
    raw, per_char, per_token = [], [], []
    for e in choice:
        got = [next(it) for _ in e["choices"]]
        raw.append(np.argmax([g["ll"] for g in got]) == e["answer"])
        per_char.append(np.argmax([g["ll"] / len(c) for g, c in zip(got, e["choices"], strict=True)]) == e["answer"])
        per_token.append(np.argmax([g["ll"] / g["tokens"] for g in got]) == e["answer"])
    out["choice"], out["choice_char"], out["choice_token"] = (np.mean(x[:first]) for x in (raw, per_char, per_token))
    cloze = list(it)[:first]
    out["cloze"] = np.mean([s["greedy"] for s in cloze])
    out["cloze_ppl"] = np.exp(-sum(s["ll"] for s in cloze) / sum(s["tokens"] for s in cloze))
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
    assert scored["choice"]["acc_token"] == hand["choice_token"] == 6 / 12 != hand["choice_char"]
    assert scored["cloze"]["ppl"] == pytest.approx(hand["cloze_ppl"], rel=1e-5)


def test_each_metric_of_a_task_is_its_rule_applied_to_the_scores_of_its_requests():
    """Scores (log-likelihood, greedy, tokens) chosen so the rules disagree: of a multiple choice example's three
    choices the first has the highest log-likelihood (-2 against -4 and -3), the second the highest per character
    (-4 over 16 characters: -0.25, against -1 and -0.5) and the third the highest per token (-3 over 12 tokens:
    -0.25, against -1 and -0.5); six such examples, answers 0, 1, 1, 2, 2, 2: acc 1/6, acc_char 2/6, acc_token
    3/6. Cloze: -2 over 1 token (greedy) and -6 over 3: acc 1/2, ppl exp(8 / 4). Minimal pairs: right when the
    good sentence scores strictly higher."""
    choices = [" a", " " + "b" * 15, " ccccc"]
    assert [len(c) for c in choices] == [2, 16, 6]
    answers = [0, 1, 1, 2, 2, 2]
    choice = tasks_lib.Task("choice", "multiple_choice",
                            tuple({"context": "x", "choices": choices, "answer": a} for a in answers))
    got = choice.metrics([(-2.0, False, 2), (-4.0, False, 8), (-3.0, False, 12)] * len(answers))
    assert got == {"acc": 1 / 6, "acc_char": 2 / 6, "acc_token": 3 / 6, "examples": 6}
    cloze = tasks_lib.Task("cloze", "cloze", ({"context": "x", "target": " y"}, {"context": "x", "target": " zzz"}))
    got = cloze.metrics([(-2.0, True, 1), (-6.0, False, 3)])
    assert got == {"acc": 0.5, "ppl": pytest.approx(math.exp(2.0), rel=1e-12), "examples": 2}
    pairs = tasks_lib.Task("pairs", "minimal_pair", tuple({"sentence_good": "g", "sentence_bad": "b"}
                                                          for _ in range(4)))
    got = pairs.metrics([(-1.0, False, 1), (-2.0, False, 1), (-3.0, False, 1), (-2.0, False, 1),
                         (-2.0, False, 1), (-2.0, False, 1), (-0.5, False, 1), (-4.0, False, 1)])
    assert got == {"acc": 0.5, "examples": 4}  # right, wrong, a tie (wrong), right


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
    assert done.stderr.splitlines()[-2:] == ["pairs: 24 examples scored, done", "choice: 12 examples scored, done"]
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


def test_the_harness_with_our_adapter_scores_the_first_limit_examples_of_local_tasks_as_by_hand(gpt2, tmp_path):
    """lm-evaluation-harness reads two tasks defined in local YAML over the fixture's JSON lines (BLiMP's pairs as
    two choices, as the harness's own BLiMP task scores them) and asks our adapter for their log-likelihoods: its
    accuracies on the first `--limit 10` examples of each are the ones computed by hand from transformers' scores
    of those (every one differs from the accuracy on all examples)."""
    (tmp_path / "tasks").mkdir()
    for name, text, choice, target in (("choice", "{{context}}", "{{choices}}", "answer"),
                                       ("pairs", "", "{{[sentence_good, sentence_bad]}}", "0")):
        (tmp_path / "tasks" / f"{name}.yaml").write_text(HARNESS_YAML.format(
            name=name, path=os.path.join(TASKS, f"{name}.jsonl"), text=text, choice=choice, target=target))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-m", "lm.evaluate", "--workdir", gpt2[0], "--harness",
                           "local_choice,local_pairs", "--harness_include", str(tmp_path / "tasks"), "--limit", "10"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)["results"]
    hand, every = _by_hand(_expected(), first=10), _by_hand(_expected())
    assert all(hand[k] != every[k] for k in ("pairs", "choice", "choice_char"))
    print({k: {m: v for m, v in r.items() if m.startswith("acc")} for k, r in results.items()})
    assert results["local_pairs"]["acc,none"] == pytest.approx(hand["pairs"], abs=1e-12)
    assert results["local_choice"]["acc,none"] == pytest.approx(hand["choice"], abs=1e-12)
    assert results["local_choice"]["acc_norm,none"] == pytest.approx(hand["choice_char"], abs=1e-12)


def _evaluations(workdir):
    with open(workdir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    return [r for r in records if "val_loss" in r]


def _accuracies_by_hand(workdir, step: int, first: int) -> dict[str, float]:
    """The metrics.jsonl task keys of the fixture's choice and pairs tasks on their `first` examples, scored here
    from checkpoint `step` of a run with a character tokenizer: each request alone in a row (the start-of-document
    token, the context's characters, the continuation's; the last max_len + 1 of them for the one long context),
    the continuation's log-likelihood summed from a log-softmax of the model's logits, and each rule applied
    (acc_token: per character, a character being a token)."""
    ckpt, _, c, tok, _ = reader.open_run(str(workdir), step)
    layout = shd.tensor_layout(1)
    model = select.model(c)
    params = ckpt.params(step, placement.abstract_params(model, layout))
    ckpt.close()
    with open(os.path.join(TASKS, "choice.jsonl")) as f:
        choice = [json.loads(line) for line in f][:first]
    with open(os.path.join(TASKS, "pairs.jsonl")) as f:
        pairs = [json.loads(line) for line in f][:first]
    requests = [(e["context"], x) for e in choice for x in e["choices"]]
    requests += [("", e[k]) for e in pairs for k in ("sentence_good", "sentence_bad")]
    rows = np.zeros((len(requests), c.max_len + 1), np.int32)  # causal: what follows a request changes nothing
    ends = []
    for i, (context, continuation) in enumerate(requests):
        ids = [tok.bos_id, *tok.encode(context + continuation)][-(c.max_len + 1):]
        assert len(tok.encode(continuation)) == len(continuation) < len(ids)
        rows[i, :len(ids)] = ids
        ends.append(len(ids))
    inputs = rows[:, :-1]
    positions = np.broadcast_to(np.arange(c.max_len), inputs.shape)
    logits = np.asarray(model.apply({"params": params}, inputs, positions, np.ones_like(inputs)), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    lls = iter([sum(logp[i, t - 1, rows[i, t]] for t in range(end - len(cont), end))
                for i, ((_, cont), end) in enumerate(zip(requests, ends, strict=True))])
    raw, per_char = [], []
    for e in choice:
        ll = np.array([next(lls) for _ in e["choices"]])
        raw.append(np.argmax(ll) == e["answer"])
        per_char.append(np.argmax(ll / [len(x) for x in e["choices"]]) == e["answer"])
    right = [next(lls) > next(lls) for _ in pairs]
    out = {"task_choice_acc": np.mean(raw), "task_choice_acc_char": np.mean(per_char),
           "task_choice_acc_token": np.mean(per_char), "task_pairs_acc": np.mean(right)}
    return {**out, "task_mean_acc": (out["task_choice_acc"] + out["task_pairs_acc"]) / 2}


def test_a_run_killed_and_resumed_logs_every_task_evaluation_once_with_an_uninterrupted_runs_values(tmp_path,
                                                                                                    cache_dir):
    """Task scores every 4 steps (validation every 2) on the first 8 examples of each task (`eval.examples`), and
    checkpoints every 4. The uninterrupted run's task scores at steps 8 and 12 are those computed by hand from its
    checkpoints on those 8 examples (not those of all the examples), and TensorBoard shows them as task/...
    scalars. SIGKILL once step 6 is logged and checkpoint 4 committed, then the same command again: the evaluations
    at 2, 4, ..., 12 appear once each, each equal to the uninterrupted run's, in metrics.jsonl and TensorBoard, and
    summary.json holds the last."""
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
    task_keys = {"task_choice_acc", "task_choice_acc_char", "task_choice_acc_token", "task_pairs_acc",
                 "task_mean_acc"}
    assert all(task_keys <= set(r) for r in want if r["step"] % 4 == 0)
    differs = False  # from the scores of all the examples: eval.examples ignored would show
    for r in want[3::2]:  # steps 8 and 12: the checkpoints kept
        hand = _accuracies_by_hand(reference, r["step"], first=8)
        assert {k: r[k] for k in task_keys} == pytest.approx(hand, abs=1e-12), r["step"]
        every = _accuracies_by_hand(reference, r["step"], first=24)
        differs |= any(every[k] != hand[k] for k in task_keys)
    assert differs
    scalars = _task_scalars(reference)
    assert scalars == {f"task/{k[5:]}": {r["step"]: pytest.approx(r[k], rel=1e-6) for r in want if k in r}
                       for k in task_keys}
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
    assert _task_scalars(workdir) == scalars


def _task_scalars(workdir) -> dict[str, dict[int, float]]:
    """The task/... scalar series of a workdir's TensorBoard event files, as TensorBoard reads them."""
    events = EventAccumulator(str(workdir))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]
            if tag.startswith("task/")}


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


def test_a_task_file_streamed_a_few_examples_at_a_time_scores_as_a_whole(gpt2):
    """`lm.evaluate` reads and scores a task file a part at a time (a file of 1.8 million pairs once took 6.5 GB and
    said nothing for minutes): parts of 5 examples give the accuracies computed by hand from `transformers`'
    scores of every request, with a progress line after each part here."""
    workdir, c, tok, layout, token_scores, params = gpt2

    def score(part):
        encoded = tasks_lib.encode_tasks(tok, [part], c.max_len)
        return score_encoded(token_scores, params, encoded, c.max_len, 2, layout)

    said = []
    got = {name: tasks_lib.stream_task(os.path.join(TASKS, f"{name}.jsonl"), score, said.append, part_size=5,
                                       every_s=0) for name in ("pairs", "choice", "cloze")}
    hand = _by_hand(_expected())
    assert got["pairs"] == {"acc": hand["pairs"], "examples": 24}
    assert got["choice"] == {"acc": hand["choice"], "acc_char": hand["choice_char"], "acc_token": hand["choice_token"],
                             "examples": 12}
    assert got["cloze"]["acc"] == hand["cloze"] and got["cloze"]["ppl"] == pytest.approx(hand["cloze_ppl"], rel=1e-5)
    done = "pairs: 24 examples scored, done"
    assert said[:6] == [*(f"pairs: {n} examples scored" for n in (5, 10, 15, 20, 24)), done]
