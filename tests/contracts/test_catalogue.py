"""The catalogue of bad inputs, as a user meets them: the command line.

Each case runs one `actstore` command on one bad input and asserts the exit
code (1 for actstore's errors, 2 for click's usage errors), that no traceback
is printed, and that the message names what is wrong and where (the file,
item or line, the field or flag, the value). Texts longer than the model's
context are the one documented non-error: they are truncated, keeping their
last tokens, with a warning.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from actstore._version import SCHEMA_VERSION
from actstore.cli.main import cli

PAIRS = [{"positive": f"I kept my promise number {i}.", "negative": f"I broke my promise number {i}."}
         for i in range(6)]


@dataclass
class Case:
    name: str
    args: list[str]
    messages: list[str]
    exit_code: int = 1
    files: dict[str, str | bytes] = field(default_factory=dict)


CASES = [
    # Contrast-set files: which file, which line or item, which field.
    Case("missing field", ["capture", "-m", "{llama}", "-d", "{tmp}/bad.jsonl", "-s", "{tmp}/new.zarr"],
         ["bad.jsonl", "line 1: missing field 'negative'"], files={"bad.jsonl": '{"positive": "a"}\n'}),
    Case("misspelled field", ["capture", "-m", "{llama}", "-d", "{tmp}/typo.json", "-s", "{tmp}/new.zarr"],
         ["typo.json", "item 2: missing field 'negative'"],
         files={"typo.json": json.dumps([{"positive": "a", "negative": "b"}, {"positive": "a", "negatve": "b"}])}),
    Case("empty file", ["capture", "-m", "{llama}", "-d", "{tmp}/empty.jsonl", "-s", "{tmp}/new.zarr"],
         ["empty.jsonl", "is empty"], files={"empty.jsonl": ""}),
    Case("empty JSON list", ["capture", "-m", "{llama}", "-d", "{tmp}/empty.json", "-s", "{tmp}/new.zarr"],
         ["empty.json", "is an empty JSON list"], files={"empty.json": "[]"}),
    Case("invalid JSON", ["capture", "-m", "{llama}", "-d", "{tmp}/broken.json", "-s", "{tmp}/new.zarr"],
         ["broken.json", "line 2: invalid JSON"], files={"broken.json": '[{"positive": "a",\n "negative": }]'}),
    Case("not UTF-8", ["capture", "-m", "{llama}", "-d", "{tmp}/latin1.jsonl", "-s", "{tmp}/new.zarr"],
         ["latin1.jsonl", "line 1: not valid UTF-8"],
         files={"latin1.jsonl": '{"positive": "caf\xe9", "negative": "b"}\n'.encode("latin-1")}),
    Case("empty text", ["capture", "-m", "{llama}", "-d", "{tmp}/blank.json", "-s", "{tmp}/new.zarr"],
         ["blank.json", "item 1: field 'positive' is empty"],
         files={"blank.json": json.dumps([{"positive": " ", "negative": "b"}])}),
    Case("text that tokenizes to nothing",
         ["capture", "-m", "{llama}", "-d", "{tmp}/nothing.jsonl", "-s", "{tmp}/new.zarr", "--chat-template"],
         ["--chat-template", "has no chat template"], files={"nothing.jsonl": '{"text": "a", "label": "x"}\n'}),
    Case("input is a folder", ["capture", "-m", "{llama}", "-d", "{tmp}", "-s", "{tmp}/new.zarr"],
         ["'--data'", "is a directory"], exit_code=2),
    # Layers and blocks.
    Case("layer out of range", ["capture", "-m", "{llama}", "-d", "{data}", "-l", "7", "-s", "{tmp}/new.zarr"],
         ["layer(s) [7] out of range; this model has decoder blocks 0..3"]),
    Case("negative layer", ["capture", "-m", "{llama}", "-d", "{data}", "-l", "-1", "-s", "{tmp}/new.zarr"],
         ["layer(s) [-1] out of range"]),
    Case("layers not numbers", ["capture", "-m", "{llama}", "-d", "{data}", "-l", "two", "-s", "{tmp}/new.zarr"],
         ["--layers 'two'", "expected 'all' or comma-separated integers"]),
    Case("blocks not found", ["capture", "-m", "{llama}", "-d", "{data}", "-l", "all", "--blocks", "model.nope",
                              "-s", "{tmp}/new.zarr"],
         ["has no attribute path 'model.nope'", "--blocks"]),
    Case("layer not in the store", ["enr", "-s", "{store}", "--layer", "3", "--k", "4", "-o", "{tmp}/v.safetensors"],
         ["layer 3 was not captured", "[1]"]),
    # k.
    Case("k = 0", ["enr", "-s", "{store}", "--layer", "1", "--k", "0", "-o", "{tmp}/v.safetensors"],
         ["'--k'", "0 is not in the range x>=1"], exit_code=2),
    Case("k > hidden", ["enr", "-s", "{store}", "--layer", "1", "--k", "999", "-o", "{tmp}/v.safetensors"],
         ["--k 999 is out of range", "32"]),
    Case("k not an integer", ["enr", "-s", "{store}", "--layer", "1", "--k", "2.5", "-o", "{tmp}/v.safetensors"],
         ["'--k'", "'2.5' is not a valid integer"], exit_code=2),
    # Classes.
    Case("class with 0 samples", ["enr", "-s", "{store}", "--layer", "1", "--k", "4", "--neg", "bad",
                                  "-o", "{tmp}/v.safetensors"],
         ["class 'bad' (--neg) is not in the store"]),
    Case("class with 1 sample", ["enr", "-s", "{one_store}", "--layer", "1", "--k", "4", "-o", "{tmp}/v.safetensors"],
         ["class 'pos' has 1 sample(s) at layer 1; ENR needs at least 2 per class"]),
    # Activations.
    Case("NaN/Inf activations", ["capture", "-m", "{broken}", "-d", "{data}", "-l", "1", "-s", "{tmp}/nan.zarr"],
         ["data.json' item 1: non-finite activation (NaN/Inf)", "float16"]),
    # Stores.
    Case("another schema version", ["stats", "-s", "{old_store}"], ["old.zarr", "schema version 99"]),
    Case("path that is not a store", ["stats", "-s", "{data}"], ["data.json", "is not an actstore store"]),
    Case("missing store", ["info", "{tmp}/missing.zarr"], ["missing.zarr", "is not an actstore store"]),
    Case("another model into a group", ["capture", "-m", "{gpt2}", "-d", "{data}", "-l", "1", "-s", "{store}",
                                        "--name", "tiny-llama"],
         ["group 'tiny-llama'", "model_id is", "pass --name"]),
    Case("another position into a group", ["capture", "-m", "{llama}", "-d", "{other}", "-l", "1", "-s", "{store}",
                                           "--position", "mean"],
         ["group 'tiny-llama'", "position is 'last' there but 'mean' now"]),
    Case("path traversal as a group name", ["capture", "-m", "{llama}", "-d", "{data}", "-s", "{tmp}/new.zarr",
                                            "--name", "../../escape"],
         ["--name '../../escape'", "no '/', no '..'"]),
    Case("bad shard", ["capture", "-m", "{llama}", "-d", "{data}", "-s", "{store}", "--shard", "3/2"],
         ["'--shard'", "'3/2': expected I/N with 0 <= I < N"], exit_code=2),
    Case("bad scheduler", ["stats", "-s", "{store}", "--scheduler", "local:0"],
         ["'--scheduler'", "'local:0': expected local:N with N >= 1"], exit_code=2),
    # Vector files.
    Case("vector file not safetensors", ["steer", "-m", "{llama}", "--vector", "{data}", "--prompt", "Hi"],
         ["data.json", "is not a safetensors vector file"]),
    Case("vector file without 'vector'", ["steer", "-m", "{llama}", "--vector", "{novec}",
                                          "--prompt", "Hi"],
         ["novec.safetensors", "'vector'"]),
    Case("vector for another hidden size", ["steer", "-m", "{gpt2_wide}", "--vector", "{vector}", "--prompt", "Hi",
                                            "--force"],
         ["vector has 32 dimensions but the model's hidden size is 48"]),
    # Models.
    Case("model that does not exist", ["capture", "-m", "{tmp}/no-such-model", "-d", "{data}", "-s", "{tmp}/n.zarr"],
         ["no-such-model", "could not load model"]),
    Case("model with truncated weights", ["capture", "-m", "{truncated}", "-d", "{data}", "-l", "1",
                                          "-s", "{tmp}/n.zarr"], ["truncated-llama", "could not load model"]),
    Case("mistyped device", ["capture", "-m", "{llama}", "-d", "{data}", "-l", "1", "-s", "{tmp}/n.zarr",
                             "--device", "cudda"], ["--device 'cudda' cannot be used", "check --device"]),
    Case("cuda without CUDA", ["capture", "-m", "{llama}", "-d", "{data}", "-l", "1", "-s", "{tmp}/n.zarr",
                               "--device", "cuda:3"], ["check --device"]),
    # Inputs that look alike.
    Case("label with a trailing NUL", ["capture", "-m", "{llama}", "-d", "{tmp}/nul.jsonl", "-s", "{tmp}/n.zarr"],
         ["nul.jsonl", "line 2: field 'label' 'pos\\x00' holds invisible characters (U+0000)"],
         files={"nul.jsonl": '{"text": "a b", "label": "pos"}\n{"text": "c d", "label": "pos\\u0000"}\n'}),
    Case("label with a zero-width space", ["capture", "-m", "{llama}", "-d", "{tmp}/zw.jsonl", "-s", "{tmp}/n.zarr"],
         ["zw.jsonl", "line 1", "U+200B"], files={"zw.jsonl": '{"text": "a b", "label": "neg\\u200b"}\n'}),
    Case("label with a trailing space", ["capture", "-m", "{llama}", "-d", "{tmp}/sp.jsonl", "-s", "{tmp}/n.zarr"],
         ["sp.jsonl", "line 1", "leading or trailing spaces"], files={"sp.jsonl": '{"text": "a", "label": "pos "}\n'}),
    Case("label not NFC", ["capture", "-m", "{llama}", "-d", "{tmp}/nfd.jsonl", "-s", "{tmp}/n.zarr"],
         ["nfd.jsonl", "line 1", "not in Unicode NFC form"],
         files={"nfd.jsonl": '{"text": "a", "label": "cafe\\u0301"}\n'}),
    Case("pair id beyond int64", ["capture", "-m", "{llama}", "-d", "{tmp}/big.jsonl", "-s", "{tmp}/n.zarr"],
         ["big.jsonl", "line 1: field 'pair_id' must be a non-negative integer below 2**62", str(2**70)],
         files={"big.jsonl": f'{{"text": "a", "label": "x", "pair_id": {2**70}}}\n'}),
    Case("JSON nested too deeply", ["capture", "-m", "{llama}", "-d", "{tmp}/deep.json", "-s", "{tmp}/n.zarr"],
         ["deep.json", "nested too deeply"], files={"deep.json": "[" * 100000 + "]" * 100000}),
    Case("JSONL line nested too deeply", ["capture", "-m", "{llama}", "-d", "{tmp}/deep.jsonl", "-s", "{tmp}/n.zarr"],
         ["deep.jsonl", "nested too deeply"], files={"deep.jsonl": '{"a": ' + "[" * 100000 + "]" * 100000 + "}\n"}),
    # Vector files read by steer and export-gguf: the same checks.
    Case("NaN vector steered", ["steer", "-m", "{llama}", "--vector", "{nan_vector}", "--prompt", "Hi", "--force"],
         ["nan.safetensors", "non-finite values (NaN/Inf) at 1 coordinate(s), e.g. [3]"]),
    Case("NaN vector exported", ["vector", "export-gguf", "{nan_vector}", "--model-hint", "llama",
                                 "--out", "{tmp}/v.gguf"], ["nan.safetensors", "non-finite values"]),
    Case("Inf vector steered", ["steer", "-m", "{llama}", "--vector", "{inf_vector}", "--prompt", "Hi", "--force"],
         ["inf.safetensors", "non-finite values"]),
    Case("vector in an integer dtype", ["steer", "-m", "{llama}", "--vector", "{int_vector}", "--prompt", "Hi"],
         ["int.safetensors", "tensor 'vector' is int32, expected a float dtype"]),
    Case("indices out of range", ["steer", "-m", "{llama}", "--vector", "{far_vector}", "--prompt", "Hi"],
         ["far.safetensors", "'indices' must be coordinates in 0..31"]),
    Case("indices repeated", ["vector", "export-gguf", "{twice_vector}", "--model-hint", "llama",
                              "--out", "{tmp}/v.gguf"], ["twice.safetensors", "repeats a coordinate"]),
    Case("vector file cut short", ["steer", "-m", "{llama}", "--vector", "{cut_vector}", "--prompt", "Hi"],
         ["cut.safetensors", "is not a safetensors vector file"]),
    # Outputs that are not regular files.
    Case("enr --out a FIFO", ["enr", "-s", "{store}", "--layer", "1", "--k", "4", "-o", "{fifo}"],
         ["--out", "fifo", "is a FIFO (named pipe)"]),
    Case("enr --out a device", ["enr", "-s", "{store}", "--layer", "1", "--k", "4", "-o", "/dev/null"],
         ["--out '/dev/null' is a device"]),
    Case("export-gguf --out a FIFO", ["vector", "export-gguf", "{vector}", "--model-hint", "llama", "--out",
                                      "{fifo}"], ["fifo", "is a FIFO (named pipe)"]),
    # Damaged stores: named store, array, chunk.
    Case("acts chunk deleted", ["stats", "-s", "{deleted_store}", "--force"],
         ["deleted.zarr", "'tiny-llama/acts' chunk c/0/0/0: missing", "actstore verify"]),
    Case("acts chunk flipped", ["stats", "-s", "{flipped_store}", "--force"],
         ["flipped.zarr", "'tiny-llama/acts' chunk c/0/0/0: checksum mismatch"]),
    Case("class chunk deleted", ["stats", "-s", "{classless_store}", "--force"],
         ["classless.zarr", "'tiny-llama/class' chunk c/0: missing"]),
    Case("n_samples beyond the rows", ["stats", "-s", "{edited_store}"],
         ["edited.zarr", "n_samples is 99 but array 'acts' has 12 rows"]),
    Case("verify names the damaged chunk", ["verify", "{flipped_store}"],
         ["DAMAGED", "c/0/0/0: checksum mismatch", "are damaged"]),
    Case("verify of a path that is not a store", ["verify", "{data}"], ["is not an actstore store"]),
    Case("damaged cached variances are recomputed", ["stats", "-s", "{stale_cache_store}"],
         ["Warning: the cached statistics", "are damaged", "recomputing them", "class 'pos': n=6"], exit_code=0),
    Case("half-created group", ["stats", "-s", "{half_store}"], ["half.zarr", "holds no captured model yet"]),
    Case("root metadata not JSON", ["info", "{garbled_store}"], ["garbled.zarr", "is not a Zarr v3 group"]),
    Case("store path is a file", ["capture", "-m", "{llama}", "-d", "{data}", "-l", "1", "-s", "{data}"],
         ["data.json", "exists and is not a Zarr"]),
    Case("file URL with a host", ["stats", "-s", "file://elsewhere/acts.zarr"],
         ["file://elsewhere/acts.zarr", "a file:// URL names a local path"]),
    # Round 3 (issue 22): no committed data replaced, one input one meaning, no endless work.
    Case("project --out the input store's folder", ["project", "-s", "{home}/projections.zarr", "--vector",
                                                    "{vector}", "--out", "{home}"],
         ["projections.zarr", "is not a projections store that `actstore project` wrote", "another --out"]),
    Case("project a vector from other weights", ["project", "-s", "{store}", "--vector", "{foreign_vector}",
                                                 "--out", "{tmp}/p"],
         ["made from model weights sha256:other", "acts.zarr' was captured from"]),
    Case("shards outnumber the texts", ["capture", "-m", "{llama}", "-d", "{data}", "-l", "1", "-s",
                                        "{tmp}/n.zarr", "--shard", "99999999999999999999999/999999999999999999999999"],
         ["999999999999999999999999 shards of 12 texts would leave shards empty", "at most 12 shards"]),
    Case("dataset with a missing label", ["capture", "-m", "{llama}", "-d", "{null_label}", "-l", "1",
                                          "-s", "{tmp}/n.zarr"],
         ["null-label.parquet", "row 2: the label is missing (None)"]),
    Case("dataset with a label hiding a NUL", ["capture", "-m", "{llama}", "-d", "{nul_label}", "-l", "1",
                                               "-s", "{tmp}/n.zarr"],
         ["nul-label.parquet", "row 2: field 'label' 'x\\x00' holds invisible characters"]),
    Case("dataset with an empty text", ["capture", "-m", "{llama}", "-d", "{empty_text}", "-l", "1",
                                        "-s", "{tmp}/n.zarr"], ["empty-text.parquet", "row 1: field 'text' is empty"]),
    Case("group without n_samples is damaged, not new", ["stats", "-s", "{unmarked_store}"],
         ["unmarked.zarr", "attribute 'n_samples' is None, expected int"]),
    Case("capture into a group without n_samples", ["capture", "-m", "{llama}", "-d", "{data}", "-l", "1",
                                                    "-s", "{unmarked_store}"],
         ["unmarked.zarr", "attribute 'n_samples' is None, expected int"]),
    Case("verify a group without n_samples", ["verify", "{unmarked_store}"],
         ["DAMAGED", "attribute 'n_samples' is None"]),
    Case("capture into a group with emptied attributes", ["capture", "-m", "{llama}", "-d", "{data}", "-l", "1",
                                                          "-s", "{emptied_store}"],
         ["emptied.zarr", "is None, expected int", "edited or damaged"]),
    Case("pos and neg the same class", ["enr", "-s", "{store}", "--layer", "1", "--k", "4", "--pos", "pos",
                                        "--neg", "pos", "-o", "{tmp}/v.safetensors"],
         ["--pos and --neg are both 'pos'", "two different classes"]),
    Case("extract pos and neg the same class", ["extract", "-s", "{store}", "--layer", "1", "--method", "pca",
                                                "--pos", "neg", "--neg", "neg", "-o", "{tmp}/v.safetensors"],
         ["are both 'neg'"]),
    Case("vector is a FIFO", ["steer", "-m", "{llama}", "--vector", "{fifo}", "--prompt", "Hi"],
         ["fifo", "is a FIFO (named pipe), not a regular file"]),
    Case("group zarr.json of 0 bytes", ["stats", "-s", "{empty_meta_store}"],
         ["empty-meta.zarr/tiny-llama/zarr.json is damaged (not valid Zarr metadata"]),
    Case("group zarr.json cut, verify", ["verify", "{cut_meta_store}"],
         ["cut-meta.zarr/tiny-llama/zarr.json is damaged"]),
    Case("group zarr.json cut, info", ["info", "{cut_meta_store}"], ["cut-meta.zarr/tiny-llama/zarr.json is damaged"]),
    Case("stats-only moments deleted, verify", ["verify", "{moments_lost_store}"],
         ["DAMAGED", "its moments are missing (array 'moments0'"]),
    Case("stats-only moments deleted, stats", ["stats", "-s", "{moments_lost_store}", "--force"],
         ["moments-lost.zarr", "its moments are missing"]),
    Case("store whose creation was cut before its first write", ["info", "{tmp}/unborn.zarr"],
         ["unborn.zarr", "its creation was interrupted before anything was written"],
         files={"unborn.zarr/zarr.json": b""}),
    Case("positions beyond any context", ["steer", "-m", "{llama}", "--vector", "{vector}", "--prompt", "Hi",
                                          "--positions", "from:99999999999999999999999"],
         ["from:99999999999999999999999", "0 <= N < 2**31"]),
    Case("positions from a negative token", ["steer", "-m", "{llama}", "--vector", "{vector}", "--prompt", "Hi",
                                             "--positions", "from:-1"], ["'from:-1'", "expected 'all'"]),
    Case("positions from a word", ["steer", "-m", "{llama}", "--vector", "{vector}", "--prompt", "Hi",
                                   "--positions", "from:abc"], ["'from:abc'", "expected 'all'"]),
    # Round 3, further attacks (issue 22 §6).
    Case("data is a FIFO", ["capture", "-m", "{llama}", "-d", "{fifo}", "-l", "1", "-s", "{tmp}/n.zarr"],
         ["fifo", "is a FIFO (named pipe), not a regular file"]),
    Case("empty corpus", ["capture", "-m", "{llama}", "-d", "{tmp}/empty.txt", "-l", "1", "-s", "{tmp}/n.zarr"],
         ["empty.txt", "holds no text"], files={"empty.txt": ""}),
    Case("binary corpus", ["capture", "-m", "{llama}", "-d", "{tmp}/binary.txt", "-l", "1", "-s", "{tmp}/n.zarr"],
         ["binary.txt", "line 1: not valid UTF-8"], files={"binary.txt": bytes(range(128, 256)) * 8}),
    Case("shard 0/0", ["capture", "-m", "{llama}", "-d", "{data}", "-l", "1", "-s", "{tmp}/n.zarr", "--shard", "0/0"],
         ["'0/0': expected I/N with 0 <= I < N"], exit_code=2),
    Case("shard 3/2", ["capture", "-m", "{llama}", "-d", "{data}", "-l", "1", "-s", "{tmp}/n.zarr", "--shard", "3/2"],
         ["'3/2': expected I/N with 0 <= I < N"], exit_code=2),
    Case("identical classes, enr", ["enr", "-s", "{same_store}", "--layer", "1", "--k", "4", "-o",
                                    "{tmp}/v.safetensors"], ["same mean at layer 1", "would be zero"]),
    Case("identical classes, pca", ["extract", "-s", "{same_store}", "--layer", "1", "--method", "pca", "-o",
                                    "{tmp}/v.safetensors"], ["same mean at layer 1"]),
    Case("identical classes, lda", ["extract", "-s", "{same_store}", "--layer", "1", "--method", "lda", "-o",
                                    "{tmp}/v.safetensors"], ["same mean at layer 1"]),
    Case("one pair, probe", ["extract", "-s", "{one_store}", "--layer", "1", "--method", "probe", "-o",
                             "{tmp}/v.safetensors"], ["has 1 sample(s) at layer 1", "at least 2 per class"]),
    Case("one pair, whitened", ["extract", "-s", "{one_store}", "--layer", "1", "--method", "whitened", "-o",
                                "{tmp}/v.safetensors"], ["has 1 sample(s) at layer 1"]),
    Case("store path with spaces and non-ASCII", ["capture", "-m", "{llama}", "-d", "{data}", "-l", "1", "-s",
                                                  "{tmp}/my store \u00fc.zarr"], ["captured 12 texts"], exit_code=0),
    Case("symlinked store", ["stats", "-s", "{linked_store}"], ["class 'pos': n=6"], exit_code=0),
    Case("eval --out a file", ["eval", "-m", "{llama}", "-s", "{store}", "--data-test", "{data}", "--layers", "1",
                               "--out", "{data}"], ["'--out'", "is a file"], exit_code=2),
    Case("eval --kl-prompts with an item of no prompt",
         ["eval", "-m", "{llama}", "-s", "{store}", "--data-test", "{data}", "--text", "{data}", "--layers", "1",
          "--k", "4", "--damage", "ppl,kl", "--kl-prompts", "{tmp}/kl.json", "--out", "{tmp}/sweep"],
         ["--kl-prompts", "kl.json' item 2", "'instruction' or 'prompt' field"],
         files={"kl.json": json.dumps([{"instruction": "Say hi."}, {"question": "Say bye."}])}),
    Case("eval --damage without ppl", ["eval", "-m", "{llama}", "-s", "{store}", "--data-test", "{data}", "--layers",
                                       "1", "--damage", "kl", "--out", "{tmp}/sweep"],
         ["--damage 'kl'", "ppl is required", "ppl,kl"]),
    Case("project onto a class the store lacks", ["project", "-s", "{store}", "--vector", "{vector}",
                                                  "--pos", "moral"], ["'moral'"]),
    Case("steer with a NaN alpha", ["steer", "-m", "{llama}", "--vector", "{vector}", "--prompt", "Hi",
                                    "--alpha", "nan"], ["alpha"]),
    Case("dataset without rows", ["capture", "-m", "{llama}", "-d", "{no_rows}", "-l", "1", "-s", "{tmp}/n.zarr"],
         ["no-rows.parquet", "holds no rows"]),
    # Round 4 (issue 31): a chunk is bound to its place; every read of activations is guarded as stats is.
    Case("acts chunks of two layers exchanged, verify", ["verify", "{swapped_store}"],
         ["DAMAGED", "'tiny-llama/acts' chunk c/0/0/0: not the chunk recorded for this place",
          "'tiny-llama/acts' chunk c/0/1/0: not the chunk recorded for this place"]),
    Case("acts chunks of two layers exchanged, stats", ["stats", "-s", "{swapped_store}", "--force"],
         ["swapped.zarr", "group 'tiny-llama' is damaged: array 'tiny-llama/acts' chunk c/0/",
          "not the chunk recorded for this place", "actstore verify"]),
    Case("acts chunks of two layers exchanged, enr", ["enr", "-s", "{swapped_store}", "--layer", "2", "--k", "4",
                                                      "-o", "{tmp}/v.safetensors"],
         ["swapped.zarr", "'tiny-llama/acts' chunk c/0/", "not the chunk recorded for this place"]),
    Case("project a store with a damaged chunk", ["project", "-s", "{flipped_store}", "--vector", "{vector}"],
         ["flipped.zarr", "'tiny-llama/acts' chunk c/0/0/0: checksum mismatch", "actstore verify"]),
    Case("project a store with a missing chunk", ["project", "-s", "{deleted_store}", "--vector", "{vector}"],
         ["deleted.zarr", "'tiny-llama/acts' chunk c/0/0/0: missing"]),
    Case("extract pca from a store with a damaged chunk", ["extract", "-s", "{flipped_store}", "--layer", "1",
                                                           "--method", "pca", "-o", "{tmp}/v.safetensors"],
         ["flipped.zarr", "'tiny-llama/acts' chunk c/0/0/0: checksum mismatch"]),
    Case("extract probe from a store with a missing chunk", ["extract", "-s", "{deleted_store}", "--layer", "1",
                                                             "--method", "probe", "-o", "{tmp}/v.safetensors"],
         ["deleted.zarr", "'tiny-llama/acts' chunk c/0/0/0: missing"]),
    Case("eval --methods pca on a store with a damaged chunk",
         ["eval", "-m", "{llama}", "-s", "{flipped_store}", "--data-test", "{data}", "--layers", "1", "--k", "4",
          "--methods", "pca", "--alpha", "1", "--no-separation", "--out", "{tmp}/sweep"],
         ["flipped.zarr", "'tiny-llama/acts' chunk c/0/0/0: checksum mismatch"]),
    Case("eval --heldout-store with a missing chunk",
         ["eval", "-m", "{llama}", "-s", "{store}", "--data-test", "{data}", "--layers", "1", "--k", "4",
          "--alpha", "1", "--heldout-store", "{deleted_store}", "--out", "{tmp}/sweep"],
         ["deleted.zarr", "'tiny-llama/acts' chunk c/0/0/0: missing"]),
    Case("project a stats-only store", ["project", "-s", "{stats_only_store}", "--vector", "{vector}"],
         ["stats-only.zarr", "was captured stats-only (moments, no rows)"]),
    Case("project a store that holds no samples yet", ["project", "-s", "{rowless_store}", "--vector", "{vector}"],
         ["rowless.zarr' group 'tiny-llama' holds no samples yet"]),
    Case("a model group given as the store", ["stats", "-s", "{store}/tiny-llama"],
         ["tiny-llama' is a Zarr group but not an actstore store", "it is group 'tiny-llama' of the actstore store",
          "acts.zarr'; pass the store"]),
    Case("an array given as the store", ["enr", "-s", "{store}/tiny-llama/acts", "--layer", "1", "--k", "4",
                                         "-o", "{tmp}/v.safetensors"],
         ["acts' is not a Zarr v3 group", "inside group 'tiny-llama' of the actstore store"]),
    Case("a Zarr v2 store", ["stats", "-s", "{tmp}/v2.zarr"], ["v2.zarr", "a Zarr v2 store", "Zarr v3"],
         files={"v2.zarr/.zgroup": '{"zarr_format": 2}'}),
    Case("verify a store without groups", ["verify", "{tmp}/empty.zarr"], ["0 group(s) (it holds no captured model"],
         exit_code=0, files={"empty.zarr/zarr.json": json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {
             "actstore": {"kind": "actstore-activations", "schema_version": SCHEMA_VERSION}}})}),
    Case("a store path under a file", ["capture", "-m", "{llama}", "-d", "{data}", "-l", "1", "-s",
                                       "{data}/inner.zarr"],
         ["--store", "data.json/inner.zarr", "a part of it is a file, not a folder"]),
    Case("a store holding only zarr's temporary root file", ["info", "{tmp}/cut.zarr"],
         ["cut.zarr", "its creation was interrupted before anything was written"],
         files={f"cut.zarr/zarr.{'ab' * 16}.partial": '{"zarr_format": 3, "no'}),
]


@pytest.fixture(scope="module")
def world(run, tmp_path_factory, tiny_model_dirs, tiny_tokenizer):
    """Files every case may refer to: models, a store, a vector, an old store."""
    import torch
    import zarr
    from safetensors.numpy import save_file
    from transformers import AutoModelForCausalLM, GPT2Config

    tmp = tmp_path_factory.mktemp("catalogue")
    data = tmp / "data.json"
    data.write_text(json.dumps(PAIRS))
    other = tmp / "other.json"
    other.write_text(json.dumps(PAIRS[:3]))
    llama = tiny_model_dirs["llama"]
    store = tmp / "acts.zarr"
    assert run("capture", "-m", llama, "-d", data, "-l", "1", "-s", store, "-q").exit_code == 0
    vector = tmp / "v.safetensors"
    assert run("enr", "-s", store, "--layer", "1", "--k", "4", "-o", vector).exit_code == 0
    one = tmp / "one.jsonl"
    one.write_text('{"text": "alpha", "label": "pos"}\n{"text": "beta", "label": "neg"}\n'
                   '{"text": "gamma", "label": "neg"}\n')
    one_store = tmp / "one.zarr"
    assert run("capture", "-m", llama, "-d", one, "-l", "1", "-s", one_store, "-q").exit_code == 0
    old_store = tmp / "old.zarr"
    assert run("capture", "-m", llama, "-d", data, "-l", "1", "-s", old_store, "-q").exit_code == 0
    root = zarr.open_group(old_store, mode="a")
    root.attrs["actstore"] = {**root.attrs["actstore"], "schema_version": 99}
    save_file({"enr": torch.ones(32).numpy()}, str(tmp / "novec.safetensors"))
    # A model whose block 0 overflows (every activation after it is inf).
    broken = tmp / "broken"
    model = AutoModelForCausalLM.from_pretrained(llama)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.fill_(float("inf"))
    model.save_pretrained(broken)
    tiny_tokenizer.save_pretrained(broken)
    # A GPT-2 of another hidden size.
    wide = tmp / "gpt2-wide"
    config = GPT2Config(n_embd=48, n_layer=2, n_head=2, vocab_size=len(tiny_tokenizer), n_positions=64)
    AutoModelForCausalLM.from_config(config).save_pretrained(wide)
    tiny_tokenizer.save_pretrained(wide)
    return {"tmp": tmp, "data": data, "other": other, "llama": llama, "gpt2": tiny_model_dirs["gpt2"],
            "store": store, "vector": vector, "one_store": one_store, "old_store": old_store, "broken": broken,
            "gpt2_wide": wide, "novec": tmp / "novec.safetensors",
            **_bad_vectors(tmp, vector), **_damaged_stores(run, tmp, store, llama, data), **_bad_models(tmp, llama),
            **_bad_datasets(tmp), **_round3(run, tmp, store, vector, llama), **_round4(run, tmp, llama, data)}


def _round4(run, tmp, llama, data) -> dict:
    import shutil

    from actstore.stores import ActivationWriter, CaptureSpec

    swapped = tmp / "swapped.zarr"  # two layers' chunk files exchanged: each passes its own checksum
    assert run("capture", "-m", llama, "-d", data, "-l", "1,2", "-s", swapped, "-q").exit_code == 0
    shutil.rmtree(swapped / "tiny-llama" / "stats", ignore_errors=True)  # the capture's cache: read the chunks
    acts = swapped / "tiny-llama" / "acts" / "c" / "0"
    (acts / "0" / "0").rename(acts / "swap")
    (acts / "1" / "0").rename(acts / "0" / "0")
    (acts / "swap").rename(acts / "1" / "0")
    stats_only = tmp / "stats-only.zarr"
    assert run("capture", "-m", llama, "-d", data, "-l", "1", "-s", stats_only, "-q", "--stats-only").exit_code == 0
    rowless = tmp / "rowless.zarr"  # a capture interrupted before its first window's commit
    attrs = json.loads((swapped / "tiny-llama" / "zarr.json").read_text())["attributes"]
    with ActivationWriter.open(rowless, "tiny-llama", CaptureSpec.from_attrs(attrs)) as writer:
        writer.begin_run(str(data), "0" * 64, 12, False, {})
    return {"swapped_store": swapped, "stats_only_store": stats_only, "rowless_store": rowless}


def _bad_datasets(tmp) -> dict:
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    made = {}
    for name, columns in {"null-label": {"text": ["a b", "c d"], "label": ["x", None]},
                          "nul-label": {"text": ["a b", "c d"], "label": ["x", "x\x00"]},
                          "empty-text": {"text": ["", "c d"], "label": ["x", "y"]},
                          "no-rows": {"text": pa.array([], pa.string())}}.items():
        pq.write_table(pa.table(columns), tmp / f"{name}.parquet")
        made[name.replace("-", "_")] = tmp / f"{name}.parquet"
    return made


def _round3(run, tmp, store, vector, llama) -> dict:
    import shutil

    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    home = tmp / "home"
    shutil.copytree(store, home / "projections.zarr")
    with safe_open(str(vector), "np") as handle:
        metadata = handle.metadata()
    foreign = tmp / "foreign.safetensors"
    save_file(load_file(str(vector)), str(foreign), metadata={**metadata, "model_fingerprint": "sha256:other"})
    same = tmp / "same.json"  # both classes the same texts: every vector would be zero
    same.write_text(json.dumps([{"positive": f"same text {i}", "negative": f"same text {i}"} for i in range(4)]))
    same_store = tmp / "same.zarr"
    assert run("capture", "-m", llama, "-d", same, "-l", "1", "-s", same_store, "-q").exit_code == 0
    linked = tmp / "linked.zarr"
    linked.symlink_to(store)
    return {"home": home, "foreign_vector": foreign, "same_store": same_store, "linked_store": linked}


def _bad_vectors(tmp, good) -> dict:
    import numpy as np
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(good))
    made = {}
    for name, change in {
        "nan": lambda t: t["vector"].__setitem__(3, np.nan),
        "inf": lambda t: t["vector"].__setitem__(5, np.inf),
        "int": lambda t: t.__setitem__("vector", np.arange(32, dtype=np.int32)),
        "far": lambda t: t.__setitem__("indices", np.array([1, 40], dtype=np.int64)),
        "twice": lambda t: t.__setitem__("indices", np.array([1, 1], dtype=np.int64)),
    }.items():
        copy = {k: v.copy() for k, v in tensors.items()}
        change(copy)
        save_file(copy, str(tmp / f"{name}.safetensors"), metadata={"layer": "1"})
        made[f"{name}_vector"] = tmp / f"{name}.safetensors"
    cut = tmp / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-40])
    fifo = tmp / "fifo"
    os.mkfifo(fifo)
    return {**made, "cut_vector": cut, "fifo": fifo}


def _damaged_stores(run, tmp, store, llama, data) -> dict:
    import shutil

    import zarr

    def copy(name):
        target = tmp / f"{name}.zarr"
        shutil.copytree(store, target)
        return target

    deleted = copy("deleted")
    (deleted / "tiny-llama" / "acts" / "c" / "0" / "0" / "0").unlink()
    flipped = copy("flipped")
    chunk = flipped / "tiny-llama" / "acts" / "c" / "0" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[-9] ^= 0x40
    chunk.write_bytes(bytes(raw))
    classless = copy("classless")
    (classless / "tiny-llama" / "class" / "c" / "0").unlink()
    edited = copy("edited")
    zarr.open_group(edited / "tiny-llama", mode="a").update_attributes({"n_samples": 99})
    stale = copy("stale-cache")
    assert run("stats", "-s", stale, "-q").exit_code == 0
    caches = stale / "tiny-llama" / "stats"
    current = json.loads((caches / "zarr.json").read_text())["attributes"]["current"]
    (caches / current / "var" / "c" / "0" / "0" / "0").unlink()
    unmarked = copy("unmarked")  # lost its n_samples attribute: damaged, not half-created
    meta = json.loads((unmarked / "tiny-llama" / "zarr.json").read_text())
    del meta["attributes"]["n_samples"]
    (unmarked / "tiny-llama" / "zarr.json").write_text(json.dumps(meta))
    emptied = copy("emptied")
    zarr.open_group(emptied / "tiny-llama", mode="a").attrs.put({})
    emptied_meta = copy("empty-meta")  # a crash without fsync can leave a 0-byte zarr.json
    (emptied_meta / "tiny-llama" / "zarr.json").write_bytes(b"")
    cut_meta = copy("cut-meta")
    (cut_meta / "tiny-llama" / "zarr.json").write_bytes((store / "tiny-llama" / "zarr.json").read_bytes()[:50])
    moments_lost = tmp / "moments-lost.zarr"
    assert run("capture", "-m", llama, "-d", data, "-l", "1", "-s", moments_lost, "-q", "--stats-only").exit_code == 0
    shutil.rmtree(moments_lost / "tiny-llama" / "moments0")
    half = tmp / "half.zarr"
    root = zarr.open_group(half, mode="w", attributes={"actstore": {"kind": "actstore-activations",
                                                                    "schema_version": 1}})
    root.create_group("tiny-llama").create_array("acts", shape=(0, 1, 32), dtype="float32")
    garbled = copy("garbled")
    (garbled / "zarr.json").write_text('{"zarr_format": 3, "node_type": ')
    return {"deleted_store": deleted, "flipped_store": flipped, "classless_store": classless,
            "edited_store": edited, "stale_cache_store": stale, "half_store": half, "garbled_store": garbled,
            "unmarked_store": unmarked, "emptied_store": emptied, "empty_meta_store": emptied_meta,
            "cut_meta_store": cut_meta, "moments_lost_store": moments_lost}


def _bad_models(tmp, llama) -> dict:
    import shutil

    truncated = tmp / "truncated-llama"
    shutil.copytree(llama, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return {"truncated": truncated}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_bad_input_gets_a_clear_message_naming_what_and_where(run, world, case, tmp_path):
    fill = {**world, "tmp": tmp_path}
    for name, content in case.files.items():
        path = Path(tmp_path) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = run(*[a.format(**{k: str(v) for k, v in fill.items()}) for a in case.args])
    assert result.exit_code == case.exit_code, result.output
    assert "Traceback" not in result.output
    if case.exit_code == 1:  # actstore's own errors are ActstoreErrors, not crashes
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    for message in case.messages:
        assert message in result.output, result.output


def test_project_into_the_input_stores_folder_leaves_the_store_whole(run, world):
    import actstore

    store = world["home"] / "projections.zarr"
    result = run("project", "-s", store, "--vector", world["vector"], "--out", world["home"])
    assert result.exit_code == 1
    assert actstore.open_store(store).sizes["sample"] == 2 * len(PAIRS)


def test_a_group_missing_attributes_keeps_its_rows_through_a_capture(run, world):
    import zarr

    for name in ("unmarked_store", "emptied_store"):
        assert run("capture", "-m", world["llama"], "-d", world["data"], "-l", "1", "-s", world[name]).exit_code == 1
        assert zarr.open_group(world[name] / "tiny-llama", mode="r")["acts"].shape[0] == 2 * len(PAIRS)


@pytest.mark.parametrize("left", ["zarr.json", f"zarr.{'ab' * 16}.partial"], ids=["empty root", "temporary root"])
def test_a_store_cut_before_its_first_write_is_captured_into_again(run, world, tmp_path, left):
    # a kill between zarr's write of the root's temporary file and its rename left a folder that could
    # never be captured into ("exists and is not a Zarr store"; issue 31)
    unborn = tmp_path / "unborn.zarr"
    unborn.mkdir()
    (unborn / left).write_bytes(b"" if left == "zarr.json" else b'{"zarr_format": 3, "node_type": "gr')
    result = run("capture", "-m", world["llama"], "-d", world["data"], "-l", "1", "-s", unborn, "--resume", "-q")
    assert result.exit_code == 0, result.output
    assert run("verify", unborn).exit_code == 0


def test_texts_longer_than_the_context_are_truncated_with_a_warning_not_refused(world, tmp_path):
    long = tmp_path / "long.json"
    long.write_text(json.dumps([{"positive": "word " * 400 + "yes", "negative": "word " * 400 + "no"}]))
    result = CliRunner().invoke(cli, ["capture", "-m", str(world["llama"]), "-d", str(long), "-l", "1",
                                      "-s", str(tmp_path / "long.zarr"), "-q"])
    assert result.exit_code == 0, result.output
    assert "truncated to their last" in result.output
