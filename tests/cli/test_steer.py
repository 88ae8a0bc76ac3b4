"""``actstore steer --operator``: every vector applied by the operator asked for, instead of its file's."""

from __future__ import annotations

import numpy as np

from actstore.vectors.info import VectorInfo
from actstore.vectors.vector import SteeringVector, save_vector


def _vector_file(tmp_path, hidden=32):
    values = np.random.default_rng(1).normal(size=hidden).astype(np.float32)
    return save_vector(SteeringVector(values, np.arange(hidden), np.abs(values), VectorInfo(layer=1)),
                       tmp_path / "v.safetensors")


def test_operator_overrides_the_files_and_is_said(tmp_path, tiny_model_dirs, run):
    model, vector = tiny_model_dirs["llama"], _vector_file(tmp_path)
    plain = run("steer", "--model", model, "--vector", vector, "--alpha", 1, "-p", "I fed the", "--max-new-tokens", 4)
    projected = run("steer", "--model", model, "--vector", vector, "--alpha", 1, "-p", "I fed the",
                    "--max-new-tokens", 4, "--operator", "project", "--apply-layers", "all")
    assert plain.exit_code == 0 and projected.exit_code == 0, projected.output
    assert "(project at all layers)" in projected.output and "project" not in plain.output


def test_operator_settings_without_an_operator_are_a_usage_error(tmp_path, tiny_model_dirs, run):
    result = run("steer", "--model", tiny_model_dirs["llama"], "--vector", _vector_file(tmp_path), "-p", "x",
                 "--clamp-value", 1.0)
    assert result.exit_code == 2 and "go with --operator" in result.output


def test_a_clamp_without_a_value_is_refused_naming_the_flag(tmp_path, tiny_model_dirs, run):
    result = run("steer", "--model", tiny_model_dirs["llama"], "--vector", _vector_file(tmp_path), "-p", "x",
                 "--operator", "clamp")
    assert result.exit_code == 1 and "--clamp-value" in result.output and "Traceback" not in result.output


# Chat formatting (issue 28): --chat-template and --system format each prompt through ChatFormat.
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


def chat_model(tmp_path, tiny_model_dirs):
    """The tiny Llama whose tokenizer has a chat template (its tokenizer adds BOS itself, as the template does)."""
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "chat-llama"
    shutil.copytree(tiny_model_dirs["llama"], folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder, tokenizer


def _recording_generate(monkeypatch):
    """Every prompt batch the model's ``generate`` receives, as lists of real token ids."""
    import transformers

    received, original = [], transformers.GenerationMixin.generate

    def generate(self, *args, **kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        received.append([row[keep.bool()].tolist() for row, keep in zip(ids, mask)])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.GenerationMixin, "generate", generate)
    return received


def test_chat_template_and_system_format_the_prompt_the_model_reads(tmp_path, tiny_model_dirs, run, monkeypatch):
    model, tokenizer = chat_model(tmp_path, tiny_model_dirs)
    received = _recording_generate(monkeypatch)
    result = run("steer", "--model", model, "--vector", _vector_file(tmp_path), "-p", "I fed the", "-p", "Hello",
                 "--chat-template", "--system", "Be brief.", "--max-new-tokens", 3, "--compare",
                 "--positions", "response")
    assert result.exit_code == 0, result.output
    # written by hand, not by the template: one BOS (the tokenizer's post-processor adds it here)
    expected = [tokenizer(f"<system>Be brief.\n<user>{prompt}\n<assistant>")["input_ids"]
                for prompt in ("I fed the", "Hello")]
    assert received == [expected, expected]  # unsteered (--compare), then steered
    assert [ids[:2].count(tokenizer.bos_token_id) for ids in expected] == [1, 1]
    assert "=== prompt: 'I fed the' (chat template, system 'Be brief.')" in result.output
    assert "positions response" in result.output


def test_a_system_prompt_without_a_template_is_a_paragraph_before_the_prompt(tmp_path, tiny_model_dirs, run,
                                                                            monkeypatch):
    from transformers import AutoTokenizer

    received = _recording_generate(monkeypatch)
    model = tiny_model_dirs["llama"]
    result = run("steer", "--model", model, "--vector", _vector_file(tmp_path), "-p", "Hello", "--system", "Be brief.",
                 "--max-new-tokens", 2)
    assert result.exit_code == 0, result.output
    assert received == [[AutoTokenizer.from_pretrained(model)("Be brief.\n\nHello")["input_ids"]]]


def test_a_chat_template_for_a_tokenizer_without_one_is_refused_cleanly(tmp_path, tiny_model_dirs, run):
    result = run("steer", "--model", tiny_model_dirs["llama"], "--vector", _vector_file(tmp_path), "-p", "Hello",
                 "--chat-template")
    assert result.exit_code == 1 and "has no chat template" in result.output and "--chat-template" in result.output
    assert "Traceback" not in result.output
