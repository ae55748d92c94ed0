"""Log-likelihoods of (context, continuation) text pairs, many pairs packed into each row of a batch.

A pair's tokens are the start-of-document token, the context's and the continuation's. The text is split as
lm-evaluation-harness splits it, so both give a pair the same tokens: whitespace ending the context moves to the
start of the continuation, the whole text is encoded once, and the continuation is what follows the context's own
token count. Pairs are packed, longest first, into rows of `max_len + 1` tokens, each pair a segment of its own
(positions restart at 0 and attention stays inside the segment), so a pair scores as if it were alone. A pair
longer than a row loses context tokens from the left; a text with no context longer than the model's context (a
long sentence of a minimal pair) is scored in rolling windows; a continuation after a context that does not fit
the model's context is an error.
"""

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from lm.errors import UserError
from lm.model.transformer import TransformerLM
from lm.parallel.mesh import Layout
from lm.parallel.placement import abstract_params
from lm.tokenizer.kinds import AnyTokenizer

# (params, tokens [B, L], positions [B, L], segment_ids [B, L]) -> (log-likelihood [B, L-1], greedy [B, L-1]):
# position t scores token t + 1 of its row.
Piece = tuple[list[int], list[int]]  # (context ids, continuation ids) scored in one row
TokenScores = Callable[[Any, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def encode_pair(tokenizer: AnyTokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, starting with the start-of-document token; continuation ids) of one pair."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    head = len(tokenizer.encode(context)) if context else 0
    return [tokenizer.bos_id, *whole[:head]], whole[head:]


def make_token_scores(model: TransformerLM, layout: Layout) -> TokenScores:
    """The jitted per-token scorer of `model` on `layout`."""
    def scores(params: Any, tokens: jax.Array, positions: jax.Array, segments: jax.Array):
        logits = model.apply({"params": params}, tokens[:, :-1], positions[:, :-1], segments[:, :-1],
                             padded_vocab=True)  # [B, L-1, V'] float32, the padding columns at -1e30
        targets = tokens[:, 1:]
        logp = jax.nn.log_softmax(logits, axis=-1)
        picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # [B, L-1]
        return picked, jnp.argmax(logits, axis=-1) == targets

    params_sh = jax.tree.map(lambda s: s.sharding, abstract_params(model, layout))
    rows = layout.batch_sharding()
    jitted = jax.jit(scores, in_shardings=(params_sh, rows, rows, rows))

    def run(params: Any, tokens: jax.Array, positions: jax.Array, segments: jax.Array):
        with layout.scope():
            return jitted(params, tokens, positions, segments)

    return run


def _pack(pairs: Sequence[tuple[list[int], list[int]]], row_len: int) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Rows [R, 3, row_len] (tokens, positions, segment ids) and, per pair, (row, first scored target index, end)."""
    lengths = [len(c) + len(t) for c, t in pairs]
    order = sorted(range(len(pairs)), key=lambda i: -min(lengths[i], row_len))
    rows: list[list[tuple[list[int], int]]] = []
    free = 0
    where: list[tuple[int, ...]] = [()] * len(pairs)
    for i in order:
        context, continuation = pairs[i]
        tokens = (context + continuation)[-row_len:]
        if len(tokens) > free:
            rows.append([])
            free = row_len
        start = row_len - free
        rows[-1].append((tokens, start))
        free -= len(tokens)
        end = start + len(tokens)
        where[i] = (len(rows) - 1, end - len(continuation) - 1, end - 1)  # inputs that predict the continuation
    packed = np.zeros((len(rows), 3, row_len), np.int32)
    for r, row in enumerate(rows):
        for segment, (tokens, start) in enumerate(row, 1):
            n = len(tokens)
            packed[r, 0, start:start + n] = tokens
            packed[r, 1, start:start + n] = np.arange(n)
            packed[r, 2, start:start + n] = segment
    return packed, where


def _batches(packed: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for first in range(0, len(packed), batch_size):
        part = packed[first:first + batch_size]
        if len(part) < batch_size:  # the last batch filled with empty rows (segment 0: nothing attends to them)
            part = np.concatenate([part, np.zeros((batch_size - len(part), *part.shape[1:]), part.dtype)])
        yield part


def score_pairs(token_scores: TokenScores, params: Any, tokenizer: AnyTokenizer, pairs: Sequence[tuple[str, str]],
                max_len: int, batch_size: int, layout: Layout) -> list[tuple[float, bool, int]]:
    """(summed log-likelihood of the continuation, whether greedy decoding gives every one of its tokens, its token
    count) for each (context, continuation) pair, in order."""
    return score_encoded(token_scores, params, encode_pairs(tokenizer, pairs, max_len), max_len, batch_size, layout)


def windows(ids: list[int], first: int, max_len: int) -> list[Piece]:
    """Pieces that predict ids[first:] in turn, each at most `max_len` tokens and with as much of what comes before
    it as a row holds: each token predicted once (lm-evaluation-harness's rolling windows)."""
    out = []
    for start in range(first, len(ids), max_len):
        end = min(start + max_len, len(ids))
        out.append((ids[max(0, end - max_len - 1):start], ids[start:end]))
    return out


def encode_pairs(tokenizer: AnyTokenizer, pairs: Sequence[tuple[str, str]], max_len: int) -> list[list[Piece]]:
    """The pieces to score for each pair: one (its context cut from the left to fit a row), or, for a text with no
    context (a whole sentence's probability) longer than the model's context, its rolling `windows`. One line of
    error for a continuation that is empty, or longer than `max_len` after a context."""
    out = []
    for context, continuation in pairs:
        head, ids = encode_pair(tokenizer, context, continuation)
        if not ids:
            raise UserError(f"the continuation {continuation!r} after {context[-40:]!r} is no tokens; a choice or "
                            "target must hold text")
        if len(ids) > max_len and context:
            raise UserError(f"a continuation of {len(ids)} tokens ({continuation[:40]!r}...) is longer than the "
                            f"model's context of {max_len} tokens; shorten the task's choices or targets")
        out.append(windows(head + ids, len(head), max_len))
    return out


def score_encoded(token_scores: TokenScores, params: Any, encoded: Sequence[Sequence[Piece]],
                  max_len: int, batch_size: int, layout: Layout) -> list[tuple[float, bool, int]]:
    """`score_pairs` of pairs already in tokens: each a list of pieces (context ids; continuation ids of at most
    `max_len`), the pair's score the sum over its pieces."""
    pieces = [piece for request in encoded for piece in request]
    packed, where = _pack(pieces, max_len + 1)
    processes, me = jax.process_count(), jax.process_index()
    if batch_size % layout.data_parallel or batch_size % processes:
        raise UserError(f"the scoring batch of {batch_size} rows does not divide over {layout.data_parallel} "
                        "data-parallel devices; give a multiple of that")
    lls, greedy = [], []
    for batch in _batches(packed, batch_size):
        mine = np.array_split(batch, processes)[me]  # this process's rows of the global batch
        arrays = [jax.make_array_from_process_local_data(layout.batch_sharding(), mine[:, k]) for k in range(3)]
        ll, ok = token_scores(params, *arrays)
        if processes > 1:
            ll, ok = multihost_utils.process_allgather((ll, ok), tiled=True)
        lls.append(np.asarray(ll, np.float64))
        greedy.append(np.asarray(ok))
    ll_rows, greedy_rows = np.concatenate(lls), np.concatenate(greedy)
    # Span sums from running sums with a zero in front: sum over [a, b) = cs[b] - cs[a].
    ll_cs = np.concatenate([np.zeros((len(ll_rows), 1)), np.cumsum(ll_rows, axis=1)], axis=1)
    miss_cs = np.concatenate([np.zeros((len(ll_rows), 1), np.int64), np.cumsum(~greedy_rows, axis=1)], axis=1)
    scored = [(float(ll_cs[row, b] - ll_cs[row, a]), bool(miss_cs[row, b] == miss_cs[row, a]), b - a)
              for row, a, b in where]
    out, first = [], 0
    for request in encoded:
        mine = scored[first:first + len(request)]
        first += len(request)
        out.append((sum(m[0] for m in mine), all(m[1] for m in mine), sum(m[2] for m in mine)))
    return out
