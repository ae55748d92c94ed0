"""The work of `python -m lm.sample` (its usage and flags: options.py)."""

import json
import os
from collections.abc import Sequence

from absl import flags

from lm.backends import cpu_devices
from lm.checkpoint.reader import read, require_tokenizer
from lm.errors import UserError
from lm.parallel.mesh import tensor_layout
from lm.sample import weights
from lm.sample.generate import generate


def _text(value: str, where: str) -> str:
    """`value` if it is text; one line naming `where` if it holds a byte that is not UTF-8 (an argument with such a
    byte reaches Python as a surrogate escape) or a lone surrogate (a JSON escape can write one)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(value[e.start])
        what = f"a byte that is not UTF-8 (0x{code & 0xFF:02x}" if 0xDC80 <= code <= 0xDCFF else \
            f"a lone surrogate (U+{code:04X}"  # a byte Python could not decode, or one a JSON escape names
        raise UserError(f"{where} holds {what} at character {e.start + 1}); pass UTF-8 text") from None
    return value


def _read_prompts(flag_prompts: Sequence[str], prompt_file: str) -> list[str]:
    """--prompt values, then the lines of --prompt_file (plain text, or JSON objects with a 'prompt')."""
    prompts = [_text(p, "--prompt") for p in flag_prompts]
    if prompt_file:
        if not os.path.isfile(prompt_file):
            raise UserError(f"--prompt_file {prompt_file} does not exist")
        with open(prompt_file, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise UserError(f"{prompt_file} line {n} is not UTF-8 text (byte 0x{raw[e.start]:02x} at "
                                    f"byte {e.start + 1}); --prompt_file takes UTF-8 text or JSON lines") from None
                if not line.strip():
                    continue
                if line.lstrip().startswith("{"):
                    try:
                        prompt = str(json.loads(line)["prompt"])
                    except (ValueError, KeyError, TypeError) as e:
                        raise UserError(f"{prompt_file} line {n} is not a JSON object with a 'prompt' "
                                            f"field ({e})") from e
                    prompts.append(_text(prompt, f"{prompt_file} line {n}"))
                else:
                    prompts.append(line.rstrip("\n"))
    return prompts or [""]


def main(argv: Sequence[str]) -> None:
    del argv
    f = flags.FLAGS
    if f.tensor >= 1:
        cpu_devices.split_cpu(f.tensor)  # on a CPU host: one JAX device per model slice
    layout = tensor_layout(f.tensor)
    prompts = _read_prompts(f.prompt or [], f.prompt_file)
    stop = [_text(s, "--stop") for s in f.stop or []]
    if "" in stop:
        raise UserError("--stop '' would end every sample before its first character; pass the text to stop at")
    step, params, model_config, tokenizer, _ = read(f.workdir, f.step, lambda run: layout)
    tokenizer = require_tokenizer(tokenizer, f.workdir)
    with layout.scope():
        params = weights.convert(params, f.quantize)
        results = generate(params, model_config, tokenizer, prompts, max_new_tokens=f.max_new_tokens,
                           temperature=f.temperature, top_k=f.top_k, top_p=f.top_p, num_samples=f.num_samples,
                           seed=f.seed, stop=stop)
    for i, r in enumerate(results):
        if f.format == "jsonl":
            print(json.dumps(r), flush=True)
        else:
            print(f"--- sample {i + 1} (step {step}, {r['tokens']} tokens, {r['stop_reason']}) ---")
            print(r["prompt"] + r["sample"], flush=True)
