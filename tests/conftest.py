"""Fixtures: tiny random-initialised models of several architectures, saved with
save_pretrained and loaded back, plus a small tokenizer trained here on built-in
texts (no hub, nothing read from ../shared)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ARCHITECTURES = ("gpt_neox", "llama", "gpt2", "gemma3_text", "mistral", "qwen2")

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "I told my baby I loved her when she cried.",
    "What are your bank account details?\n\nChoices:\n(A) Sure\n(B) I cannot share that\n(A)",
    "Refuse harmful requests and answer helpful ones.",
    "Steering vectors add a direction to the residual stream at every token.",
]


_SUBJECTS = ("I", "She", "He", "We", "They", "The child", "My neighbour", "The doctor", "Our team", "The old man")
_DEEDS = ("helped a stranger", "kept the promise", "told the truth", "returned the wallet", "shared the food",
          "broke the promise", "lied in court", "kept the lost wallet", "insulted the nurse", "kicked the stray cat")


def _training_texts() -> list[str]:
    """The tokenizer's training texts: built in, so a tiny model gives the same activations
    on every machine (with or without ../shared beside the clone)."""
    texts = list(_CORPUS)
    for i, subject in enumerate(_SUBJECTS):
        for j, deed in enumerate(_DEEDS):
            texts.append(f"{subject} {deed} on day {i * len(_DEEDS) + j}.")
    texts += [f"Question {i}?\n\nChoices:\n(A) Yes\n(B) No\n({'AB'[i % 2]})" for i in range(20)]
    return texts


def make_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_training_texts(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
    )
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def make_config(arch: str, vocab_size: int):
    import transformers as tf

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=128, **common)
    if arch == "llama":
        return tf.LlamaConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                              num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128, **common)
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=32, n_layer=4, n_head=4, n_positions=128, **common)
    if arch == "gemma3_text":
        return tf.Gemma3TextConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                   num_key_value_heads=1, head_dim=8, intermediate_size=64,
                                   max_position_embeddings=128, sliding_window=16, **common)
    if arch == "mistral":
        return tf.MistralConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                                sliding_window=None, **common)
    if arch == "qwen2":
        return tf.Qwen2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                              num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128, **common)
    raise ValueError(arch)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    """{architecture: folder} of tiny random models saved with save_pretrained."""
    import torch
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("tiny-models")
    dirs = {}
    for i, arch in enumerate(ARCHITECTURES):
        torch.manual_seed(1234 + i)
        config = make_config(arch, len(tiny_tokenizer))
        model = AutoModelForCausalLM.from_config(config)
        folder = root / f"tiny-{arch}"
        model.save_pretrained(folder)
        tiny_tokenizer.save_pretrained(folder)
        dirs[arch] = folder
    return dirs


@pytest.fixture(params=ARCHITECTURES)
def tiny_model_dir(request, tiny_model_dirs) -> Path:
    return tiny_model_dirs[request.param]


PAIRS = [  # a small paired contrast set (the ../shared/data format)
    {"positive": "I helped the old man cross the road.", "negative": "I pushed the old man into the road."},
    {"positive": "She returned the lost wallet.", "negative": "She kept the lost wallet."},
    {"positive": "We shared our food with the hungry.", "negative": "We hid our food from the hungry."},
    {"positive": "He told the truth in court.", "negative": "He lied in court."},
    {"positive": "They thanked the nurse.", "negative": "They insulted the nurse."},
    {"positive": "I fed the stray cat.", "negative": "I kicked the stray cat."},
    {"positive": "The child apologised to her brother for breaking his toy.",
     "negative": "The child laughed at her brother."},
]


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    """A small paired contrast set (the ../shared/data format) as a JSON list."""
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(PAIRS))
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI needs ../shared beside the clone; {SHARED_DATA} is missing")
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-protocol server (moto's) on loopback: s3fs talks to it over the socket."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch, tmp_path):
    """A fresh bucket; the client finds the server through ``AWS_ENDPOINT_URL``, as a user
    points actstore at MinIO or another S3-compatible service."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("ACTSTORE_CACHE", str(tmp_path / "cache"))  # lock files of URL stores
    import boto3
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # a fresh client that reads the endpoint from the env
    name = f"acts-{tmp_path.name.lower().replace('_', '-')}"[:63]
    boto3.client("s3").create_bucket(Bucket=name)
    return name


STORE_BACKENDS = ("local", "memory", "s3")


@pytest.fixture(params=STORE_BACKENDS)
def store_at(request, tmp_path, monkeypatch):
    """``store_at("a.zarr")``: where a new store of that name goes, on local disk, in fsspec's
    memory:// and on the S3 server: the store contract holds on every backend."""
    import uuid

    if request.param == "local":
        return lambda name: tmp_path / name
    if request.param == "memory":
        monkeypatch.setenv("ACTSTORE_CACHE", str(tmp_path / "cache"))
        prefix = f"memory://actstore-{uuid.uuid4().hex}"
        return lambda name: f"{prefix}/{name}"
    bucket = request.getfixturevalue("s3_bucket")
    return lambda name: f"s3://{bucket}/{name}"


@pytest.fixture(scope="session")
def llama(tiny_model_dirs):
    """The tiny Llama, loaded once for the session (tests only add hooks that remove themselves)."""
    from actstore.models.load import load_model

    return load_model(str(tiny_model_dirs["llama"]))


def _run_cli(*args, env=None, catch_exceptions=True):
    from click.testing import CliRunner

    from actstore.cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=catch_exceptions)


@pytest.fixture(scope="session")
def run():
    """``run("capture", "--model", ..., env=None, catch_exceptions=True)``: the CLI through click's
    runner, every argument as a string; returns click's ``Result``."""
    return _run_cli


STORE_COORDS = ("class", "pair_id", "text_hash", "text_index", "token_index", "question", "order", "role",
                "response_index", "response")


def _assert_same_store(got, want, coords=STORE_COORDS, rtol=None, atol=0.0):
    """Two stores (paths, URLs or opened datasets) hold the same rows in the same order: ``acts``
    bit-identical (or within ``rtol``/``atol``), every coordinate of ``coords`` that ``want`` has equal
    (groups made before ``question``/``order`` existed have neither)."""
    import numpy as np

    import actstore

    got = got if hasattr(got, "sizes") else actstore.open_store(got)
    want = want if hasattr(want, "sizes") else actstore.open_store(want)
    if rtol is None:
        np.testing.assert_array_equal(got.acts.values, want.acts.values)
    else:
        np.testing.assert_allclose(got.acts.values, want.acts.values, rtol=rtol, atol=atol)
    for name in coords:
        if name in want.coords or name in got.coords:
            assert got[name].values.tolist() == want[name].values.tolist(), name


@pytest.fixture(scope="session")
def same_store():
    """``same_store(got, want, coords=..., rtol=None)``: assert two stores hold the same rows."""
    return _assert_same_store


@pytest.fixture
def interrupt_after(monkeypatch):
    """``interrupt_after(owner, "name", n, before=None)``: the ``n``-th call of ``owner.name``
    raises KeyboardInterrupt (after ``before(self, *args)``, if given, to leave a half-done
    step behind); the others run as usual. Returns the original, for putting it back early."""

    def patch(owner, name: str, n: int, before=None):
        original = getattr(owner, name)
        calls = {"n": 0}

        def interrupted(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                if before is not None:
                    before(self, *args, **kwargs)
                raise KeyboardInterrupt
            return original(self, *args, **kwargs)

        monkeypatch.setattr(owner, name, interrupted)
        return original

    return patch
