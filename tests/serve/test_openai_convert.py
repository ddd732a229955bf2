"""Wire <-> core conversions of the OpenAI channel that need no server: chat prompts (the model's
template, or the plain one) and sampling parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.errors import InvalidInput
from shipyard.serve.channels.openai import convert
from shipyard.serve.channels.openai.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest

MESSAGES = [ChatMessage(role="system", content="be brief"),
            ChatMessage(role="user", content=[{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}])]


def test_plain_chat_prompt_without_a_template(lm_folders: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(lm_folders["gpt2"]))
    assert not tok.chat_template
    assert convert.chat_prompt(tok, MESSAGES) == "system: be brief\nuser: hello there\nassistant:"


def test_the_models_chat_template_is_used(lm_folders: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(lm_folders["gpt2"]))
    tok.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    assert convert.chat_prompt(tok, MESSAGES) == "<|system|>be brief\n<|user|>hello there\n<|assistant|>"


def test_sampling_params_from_the_wire() -> None:
    p = convert.sampling_params(CompletionRequest(model="m", prompt="x", stop="\n", top_k=-1, seed=3, logprobs=2))
    assert p.stop == ("\n",) and p.top_k == 0 and p.seed == 3 and p.logprobs == 2 and p.max_tokens == 16
    chat = ChatCompletionRequest(model="m", messages=MESSAGES, max_tokens=5, max_completion_tokens=7,
                                 logprobs=True, top_logprobs=3, temperature=0)
    c = convert.sampling_params(chat)
    assert c.max_tokens == 7 and c.logprobs == 3 and c.greedy
    assert convert.sampling_params(ChatCompletionRequest(model="m", messages=MESSAGES)).max_tokens is None
    with pytest.raises(InvalidInput, match="frequency_penalty=0.5 is not supported"):
        convert.sampling_params(CompletionRequest(model="m", prompt="x", frequency_penalty=0.5))
