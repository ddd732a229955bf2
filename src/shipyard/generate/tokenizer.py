"""What the serving side needs of a tokenizer besides the tokenizer itself: how many characters
one token can cover at most, so that a prompt too long for the context is refused by its length
before any of it is tokenized (a 4 MB prompt took the event loop for 10 s to find out).

The bound is only given where it is sure. A token covers the characters of its vocabulary
string at most when the tokenizer never drops or merges characters on the way: the normalizer
and the pre-tokenizer are of kinds that keep every character (or, for Unicode composition, merge
at most 4 into one), and the model is a BPE that never fuses unknown characters into one token.
Byte-level vocabularies write one character per byte, so their strings are never shorter than
the text they cover. Anything else gets no bound, and its prompts are tokenized whole (off the
event loop, within the request body limit).
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("shipyard.generate")

# Normalizers that never shrink the text, and those that compose (NFC: 'e' + U+0301 -> 'é'):
# a canonical composition merges at most 4 code points (Hangul syllables 3, U+1F82 4).
_KEEP = {"Prepend", "Lowercase", "NFD", "NFKD", "ByteLevel"}
_COMPOSE = {"NFC": 4, "NFKC": 4}
# Pre-tokenizers that split (or map bytes to characters) without removing anything.
_SPLITS = {"ByteLevel", "Metaspace", "Digits", "UnicodeScripts", "Punctuation", "Split"}


def _shrink(normalizer: dict[str, Any] | None) -> int | None:
    """How many characters of the text at most one character of the normalized text stands for."""
    if normalizer is None:
        return 1
    kind = normalizer.get("type")
    if kind == "Sequence":
        factor = 1
        for inner in normalizer.get("normalizers", []):
            f = _shrink(inner)
            if f is None:
                return None
            factor *= f
        return factor
    if kind in _KEEP:
        return 1
    if kind in _COMPOSE:
        return _COMPOSE[kind]
    if kind == "Replace":
        # A plain string replaced by another (' ' -> '▁'): it shrinks by the ratio of lengths.
        pattern, content = normalizer.get("pattern", {}).get("String"), normalizer.get("content", "")
        if isinstance(pattern, str) and pattern and content:
            return max(1, -(-len(pattern) // len(content)))
    return None  # Strip, StripAccents, BertNormalizer, Precompiled, regex Replace: may drop text


def _keeps(pre: dict[str, Any] | None) -> bool:
    if pre is None:
        return True
    kind = pre.get("type")
    if kind == "Sequence":
        return all(_keeps(p) for p in pre.get("pretokenizers", []))
    return kind in _SPLITS and pre.get("behavior", "Isolated") != "Removed"


def chars_per_token(tokenizer: Any) -> int | None:
    """The most characters of a prompt that one token covers, or None when that is not sure."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        spec = json.loads(backend.to_str())
        vocab = tokenizer.get_vocab()  # added (special) tokens included: they match literally
    except Exception as e:  # noqa: BLE001 - no bound is always safe
        log.debug("no prompt length bound for this tokenizer: %s", e)
        return None
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or (model.get("fuse_unk") and not model.get("byte_fallback")):
        return None
    shrink = _shrink(spec.get("normalizer"))
    if shrink is None or not _keeps(spec.get("pre_tokenizer")) or not vocab:
        return None
    return shrink * max(len(token) for token in vocab)
