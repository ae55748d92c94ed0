"""The kinds of tokenizer a run can hold (a trained SentencePiece model, or a Hugging Face tokenizer for imported
weights), read back from a checkpoint's JSON."""

import base64
from typing import Any

from lm.tokenizer.huggingface import HFTokenizer
from lm.tokenizer.sentencepiece import Tokenizer

AnyTokenizer = Tokenizer | HFTokenizer


def from_json(saved: dict[str, Any] | str | None) -> AnyTokenizer | None:
    """The tokenizer a checkpoint's JSON holds (`to_json()` of either kind; a bare string: SentencePiece)."""
    if saved is None:
        return None
    if isinstance(saved, str):
        return Tokenizer(base64.b64decode(saved))
    if saved["type"] in ("huggingface", "gpt2_bpe"):
        return HFTokenizer.from_json(saved)
    return Tokenizer(base64.b64decode(saved["model"]))
