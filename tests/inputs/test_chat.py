"""ChatFormat's token roles: on three chat templates (ChatML, Llama 3, Gemma), the assistant tokens
are exactly those the template marks with ``{% generation %}`` (``return_assistant_tokens_mask``), and
every role span equals an independent reconstruction from the template's own renderings."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from actstore.errors import ActstoreError
from actstore.inputs.chat import ASSISTANT, ROLES, ChatFormat, template_spans

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}{% if m['role'] == 'assistant' %}"
          "{% generation %}{{ m['content'] }}{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}"
          "{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' }}"
          "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] | trim }}{% endgeneration %}"
          "{% else %}{{ m['content'] | trim }}{% endif %}{{ '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
# Gemma folds the system prompt into the first user turn and calls the assistant "model".
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\\n\\n' %}"
         "{% set loop_messages = messages[1:] %}{% else %}{% set prefix = '' %}{% set loop_messages = messages %}"
         "{% endif %}{% for m in loop_messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
         "{{ '<start_of_turn>' + role + '\\n' }}{% if m['role'] == 'assistant' %}{% generation %}"
         "{{ m['content'] | trim }}{% endgeneration %}{% else %}"
         "{{ (prefix if loop.first else '') + m['content'] | trim }}"
         "{% endif %}{{ '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}"
         "{% endif %}")
TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "gemma": GEMMA}
EXCHANGES = [("Did I help the old man?", "You told the truth."),
             ("  What is your name? ", " I am the assistant.\n"),  # spaces a template trims
             ("Say user", "user")]  # contents that also occur in the template's headers


def with_template(tokenizer, template: str):
    tok = copy.deepcopy(tokenizer)  # the fixture is shared
    tok.chat_template = template
    return tok


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("system", [None, "Be kind."])
@pytest.mark.parametrize("user, response", EXCHANGES)
def test_assistant_tokens_are_the_templates_generation_span(tiny_tokenizer, template, system, user, response):
    tok = with_template(tiny_tokenizer, TEMPLATES[template])
    chat = ChatFormat(template=True, system=system)
    tokens = chat.tokens(tok, user, response)
    marked = tok.apply_chat_template(chat.messages(user, response), tokenize=True, return_dict=True,
                                     return_assistant_tokens_mask=True)
    assert tokens.ids == list(marked["input_ids"])
    assert (tokens.roles == ASSISTANT).astype(int).tolist() == list(marked["assistant_masks"])
    assert tokens.response_index[tokens.roles == ASSISTANT].tolist() == list(range(tokens.n_response))
    assert (tokens.response_index[tokens.roles != ASSISTANT] == -1).all()


def _layout(template: str, system: str | None, user: str, response: str) -> list[tuple[str, str]]:
    """Each template's exchange written out by hand, piece by piece: (role, text)."""
    if template == "chatml":
        turns = ([("system", system)] if system else []) + [("user", user), ("assistant", response)]
        return [piece for role, content in turns
                for piece in (("template", f"<|im_start|>{role}\n"), (role, content), ("template", "<|im_end|>\n"))]
    if template == "llama3":
        turns = ([("system", system)] if system else []) + [("user", user), ("assistant", response)]
        return [("template", "<bos>")] + [piece for role, content in turns for piece in (
            ("template", f"<|start_header_id|>{role}<|end_header_id|>\n\n"), (role, content),
            ("template", "<|eot_id|>"))]
    folded = [("system", system), ("template", "\n\n")] if system else []
    return [("template", "<bos><start_of_turn>user\n"), *folded, ("user", user),
            ("template", "<end_of_turn>\n<start_of_turn>model\n"), ("assistant", response),
            ("template", "<end_of_turn>\n")]


def _reconstructed_roles(tok, template: str, system: str | None, user: str, response: str) -> tuple[str, list[str]]:
    """The text and each token's role from the hand-written layout: a token is the role of the
    first content character it covers, else the template's."""
    pieces = _layout(template, system, user, response)
    text = "".join(piece for _, piece in pieces)
    role_of_char = [role for role, piece in pieces for _ in piece]
    encoded = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return text, [next((role_of_char[c] for c in range(a, b) if role_of_char[c] != "template"), "template")
                  for a, b in encoded["offset_mapping"]]


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("system", [None, "Be kind."])
def test_every_role_span_equals_an_independent_reconstruction(tiny_tokenizer, template, system):
    tok = with_template(tiny_tokenizer, TEMPLATES[template])
    chat = ChatFormat(template=True, system=system)
    user, response = EXCHANGES[0]
    tokens = chat.tokens(tok, user, response)
    got = [ROLES[code] for code in tokens.roles]
    text, want = _reconstructed_roles(tok, template, system, user, response)
    assert tokens.text == text and got == want
    assert {"user", "assistant", "template"} <= set(got) and ("system" in got) == (system is not None)
    # the prompt alone: the same tokens up to the response (the generation prompt), no assistant token
    prompt = chat.tokens(tok, user)
    assert prompt.ids == tokens.ids[: len(prompt.ids)] and prompt.n_response == 0
    assert np.flatnonzero(tokens.roles == ASSISTANT)[0] == len(prompt.ids)


def test_without_a_template_the_roles_follow_the_paragraphs(tiny_tokenizer):
    chat = ChatFormat(system="Be kind.")
    tokens = chat.tokens(tiny_tokenizer, "Did I help?", "Yes.")
    assert tokens.text == "Be kind.\n\nDid I help?\n\nYes."
    text_of = {role: tiny_tokenizer.decode([i for i, r in zip(tokens.ids, tokens.roles) if ROLES[r] == role])
               for role in ROLES}
    assert (text_of["system"], text_of["user"], text_of["assistant"]) == ("Be kind.", "Did I help?", "Yes.")
    assert ROLES[tokens.roles[0]] == "template"  # the tokenizer's BOS


def test_a_template_that_rewrites_its_messages_is_refused_by_name(tiny_tokenizer):
    tok = with_template(tiny_tokenizer, "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}")
    with pytest.raises(ActstoreError, match="item 3: the user turn's text 'hello' is not where.*rewrites") as err:
        ChatFormat(template=True).tokens(tok, "hello", "world", where="item 3")
    assert err.value.params == ("chat_template",)


def test_a_content_that_also_names_a_header_is_read_where_the_template_puts_it(tiny_tokenizer):
    tok = with_template(tiny_tokenizer, "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}")
    tokens = ChatFormat(template=True).tokens(tok, "user", "assistant")
    assert tokens.text == "<|user|>user<|assistant|>assistant"
    spans = template_spans(tok, ChatFormat().messages("user", "assistant"), tokens.text, False)
    assert [(ROLES[code], tokens.text[a:b], a) for code, a, b in spans] == [("user", "user", 8),
                                                                            ("assistant", "assistant", 25)]
    assert tiny_tokenizer.decode([i for i, r in zip(tokens.ids, tokens.roles) if r == ASSISTANT]) == "assistant"
