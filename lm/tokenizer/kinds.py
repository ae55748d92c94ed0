"""The kinds of tokenizer a run can hold (a trained SentencePiece model, or GPT-2's imported BPE), read back from
a checkpoint's JSON."""

import base64
from typing import Any

from lm.tokenizer.gpt2 import GPT2Tokenizer
from lm.tokenizer.sentencepiece import Tokenizer

AnyTokenizer = Tokenizer | GPT2Tokenizer


def from_json(saved: dict[str, Any] | str | None) -> AnyTokenizer | None:
    """The tokenizer a checkpoint's JSON holds (`to_json()` of either kind; a bare string: SentencePiece)."""
    if saved is None:
        return None
    if isinstance(saved, str):
        return Tokenizer(base64.b64decode(saved))
    if saved["type"] == "gpt2_bpe":
        return GPT2Tokenizer(saved["vocab"], saved["merges"])
    return Tokenizer(base64.b64decode(saved["model"]))
