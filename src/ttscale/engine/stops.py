"""Completion text and stop strings, with OpenAI semantics: the text ends before the stop string.

Generated tokens are decoded with a few prompt tokens in front, so that tokenizers that drop
a word's leading space at the start of a decode (SentencePiece) give the right text. While
decoding, only the tail of a sequence is checked, so a step costs the same at any length.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

Decode = Callable[[list[int]], str]
CONTEXT_TOKENS = 4


def decode_after(decode: Decode, context: Sequence[int], ids: Sequence[int]) -> str:
    """The text of `ids` as it reads after `context` (the tokens before them)."""
    ctx = list(context[-CONTEXT_TOKENS:])
    if not ctx:
        return decode(list(ids))
    before = decode(ctx)
    full = decode(ctx + list(ids))
    return full[len(before):] if full.startswith(before) else decode(list(ids))


def tail_window(stops: Sequence[str]) -> int:
    """Tokens to decode at each step to see any stop string that ends in the newest token."""
    return max(len(s) for s in stops) + CONTEXT_TOKENS


def stop_index(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop string begins in `text`, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def finish_text(decode: Decode, context: Sequence[int], ids: list[int], stops: Sequence[str]
                ) -> tuple[str, int, bool]:
    """(text, number of tokens kept, whether a stop string cut it).

    The tokens kept are the shortest prefix of `ids` whose text covers the returned text, so
    `token_ids` ends with the token that holds the text's last character.
    """
    text = decode_after(decode, context, ids)
    cut = stop_index(text, stops) if stops else None
    if cut is None:
        return text, len(ids), False
    text = text[:cut]
    keep = len(ids)
    while keep > 0 and len(decode_after(decode, context, ids[:keep - 1])) >= cut:
        keep -= 1
    return text, keep, True
