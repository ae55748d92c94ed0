"""Documents -> one array of token ids and a table of where each document starts, with bounded memory: documents
go through the tokenizer in groups of about a million characters, and a longer document in pieces of that size.
Used by preparation (prepare.py) for each shard."""

import itertools
from collections.abc import Iterator

import numpy as np

from lm.data.documents import Document
from lm.tokenizer.kinds import AnyTokenizer

PIECE_CHARS = 1 << 20  # characters encoded at once: longer text is encoded in pieces (`_encode_long`)


def _encode_long(tok: AnyTokenizer, text: str, dtype: np.dtype) -> np.ndarray:
    """The ids of a long `text`, encoded in pieces of about PIECE_CHARS characters, each cut before a space or a
    line break where there is one (a tokenizer starts a word there anyway, so the ids are those of the whole
    text but for a rare merge across a cut): a list of Python ints per id would take 18 times the memory."""
    out, at = [], 0
    while at < len(text):
        end = at + PIECE_CHARS
        if end < len(text):
            cut = max(text.rfind(" ", at + 1, end), text.rfind("\n", at + 1, end))
            end = cut if cut > at else end
        out.append(np.asarray(tok.encode(text[at:end]), dtype))
        at = end
    return np.concatenate(out)


def _groups(docs: list[Document], chunk: int) -> Iterator[list[Document]]:
    """`docs` in order, in groups of at most `chunk` documents and about PIECE_CHARS characters; a document
    longer than that is a group of its own."""
    group: list[Document] = []
    chars = 0
    for doc in docs:
        size = len(doc[0]) + len(doc[1])
        if group and (len(group) == chunk or chars + size > PIECE_CHARS):
            yield group
            group, chars = [], 0
        group.append(doc)
        chars += size
    if group:
        yield group


def encode_documents(docs: list[Document], tok: AnyTokenizer, dtype: np.dtype,
              chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """([tokens] of every document as [BOS] prompt text [EOS], [documents, 2] (start, first target)). Documents
    go through the tokenizer in groups (`_groups`), each group's ids into an array at once (lists of Python ints
    take ten times the memory); a long document's text in pieces (`_encode_long`)."""
    tokens, lengths, prompts = [], [], []
    for group in _groups(docs, chunk):
        if len(group) == 1 and len(group[0][1]) > PIECE_CHARS:
            p, t = group[0]
            prompt = np.asarray(tok.encode(p) if p else [], dtype)
            ids = np.concatenate([np.asarray([tok.bos_id], dtype), prompt, _encode_long(tok, t, dtype),
                                  np.asarray([tok.eos_id], dtype)])
            tokens.append(ids)
            lengths.append(np.asarray([len(ids)], np.int64))
            prompts.append(np.asarray([len(prompt)], np.int64))
            continue
        ids = [(tok.encode(p) if p else [], tok.encode(t)) for p, t in group]
        n = np.fromiter((len(p) + len(t) + 2 for p, t in ids), np.int64, len(ids))
        pieces = itertools.chain.from_iterable(((tok.bos_id,), p, t, (tok.eos_id,)) for p, t in ids)
        tokens.append(np.fromiter(itertools.chain.from_iterable(pieces), dtype, int(n.sum())))
        lengths.append(n)
        prompts.append(np.fromiter((len(p) for p, _ in ids), np.int64, len(ids)))
    lengths_all = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    table = np.zeros((len(docs), 2), np.int64)
    table[1:, 0] = np.cumsum(lengths_all)[:-1]
    table[:, 1] = 1 + (np.concatenate(prompts) if prompts else np.zeros(0, np.int64))
    return (np.concatenate(tokens) if tokens else np.zeros(0, dtype)), table
