"""Writes lm/data/shakespeare_word_order.jsonl: a multiple-choice task made from the validation split of the
bundled corpus (its last 10% of characters, which no run of the Shakespeare configs trains on).

Each example's context is a line of a speech with its newline; the choices are the line that follows it in the
play and three other orders of that line's words, in a seeded random order: a model that has learnt how the words
of its corpus follow one another picks the real line (chance is 25%; every choice has the same characters, so the
raw log-likelihood compares them fairly). A first test, the real next line among four lines from elsewhere, left
the Shakespeare configs at chance (21% to 24% after 2,000 steps): 64 tokens of context hold little of a play.
Lines of 4 to 12 words and at most 56 characters. Rerunning gives the same file:
    python experiments/word_order_task.py
"""

import json
import os
import random

from lm.data import sources

OUT = os.path.join(os.path.dirname(sources.bundled_corpus()), "shakespeare_word_order.jsonl")
EXAMPLES = 200


def _spoken(line: str) -> bool:
    return bool(line) and not line.endswith(":") and len(line) <= 56


def main() -> None:
    with open(sources.bundled_corpus(), encoding="utf-8") as f:
        text = f.read()
    lines = text[int(len(text) * 0.9):].split("\n")[1:]  # the validation split, its first partial line dropped
    pairs = [i for i in range(len(lines) - 1) if _spoken(lines[i]) and _spoken(lines[i + 1])
             and 4 <= len(lines[i + 1].split()) <= 12]
    rng = random.Random(0)
    with open(OUT, "w", encoding="utf-8") as out:
        for i in sorted(rng.sample(pairs, EXAMPLES)):
            real, words = lines[i + 1], lines[i + 1].split()
            choices = {real}
            while len(choices) < 4:
                rng.shuffle(words)
                choices.add(" ".join(words))
            choices = sorted(choices)
            rng.shuffle(choices)
            example = {"context": lines[i] + "\n", "choices": choices, "answer": choices.index(real)}
            out.write(json.dumps(example) + "\n")
    print(f"wrote {EXAMPLES} examples to {OUT}")


if __name__ == "__main__":
    main()
