"""TokenizerConfig: `config.tokenizer`, the tokenizer a fresh run trains or takes, and its checks."""

import dataclasses

from lm.section import key, positive, require

TYPES = ("char", "bpe", "unigram")  # SentencePiece's model types


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """A SentencePiece tokenizer trained on the training documents, or one given by path."""

    type: str = key("char", "char | bpe | unigram, trained on the training documents")
    vocab_size: int = key(256, "pieces of a bpe or unigram model (char: as many as the characters)")
    sample_chars: int = key(20_000_000, "characters of the training documents it is trained on (0: all)")
    path: str = key("", "a SentencePiece .model file or a Hugging Face folder (tokenizer.json), used as it is")

    def __post_init__(self) -> None:
        positive(self, "tokenizer", "vocab_size")
        require(self.sample_chars >= 0,
                f"config.tokenizer.sample_chars must be >= 0 (0: all), got {self.sample_chars}")
        require(self.type in TYPES, f"config.tokenizer.type must be one of {TYPES}, got {self.type!r}")
