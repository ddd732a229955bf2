"""The prompt length bound (`shipyard.generate.tokenizer.chars_per_token`): given only where it is
sure, and then never smaller than what one token really covers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shipyard.generate.tokenizer import chars_per_token
from tests.fixtures import LM_TEXTS


def load(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_byte_level_bpe_covers_at_most_its_longest_token(lm_folders: dict[str, Path], family: str) -> None:
    tok = load(lm_folders[family])
    bound = chars_per_token(tok)
    assert bound == max(len(t) for t in tok.get_vocab())
    texts = [*LM_TEXTS, "".join(LM_TEXTS) * 3, "    " * 50, "é€😀 ü\u0301 " * 20, "\n\n\t x" * 40, "<|endoftext|>" * 5]
    for text in texts:
        tokens = len(tok(text, add_special_tokens=False)["input_ids"])
        assert len(text) <= tokens * bound, (text[:40], tokens, bound)


def test_no_bound_where_a_tokenizer_may_drop_or_merge_text(lm_folders: dict[str, Path]) -> None:
    from tokenizers import normalizers, pre_tokenizers

    tok = load(lm_folders["gpt2"])
    longest = max(len(t) for t in tok.get_vocab())
    backend = tok.backend_tokenizer
    backend.normalizer = normalizers.NFC()  # composes up to 4 code points into one
    assert chars_per_token(tok) == 4 * longest
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    assert chars_per_token(tok) == longest
    backend.normalizer = normalizers.Strip()  # a million spaces would become nothing
    assert chars_per_token(tok) is None
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # drops whitespace
    assert chars_per_token(tok) is None
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(), pre_tokenizers.ByteLevel()])
    assert chars_per_token(tok) == longest
    assert chars_per_token(object()) is None  # not a fast tokenizer
