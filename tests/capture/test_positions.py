"""Position: one value for where capture reads (name, rows per text, reduction, parsing), and
CaptureOptions carrying the layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import actstore
from actstore.capture import CaptureOptions, Position, reduce_positions
from actstore.errors import InputFormatError

HIDDEN = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
MASK = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])  # left-padded text of 3 tokens, right-padded of 2


@pytest.mark.parametrize("name, kind, offset", [("last", "last", 0), ("last-1", "last", 1), ("last-12", "last", 12),
                                                 ("mean", "mean", 0), ("all", "all", 0),
                                                 ("prompt-last", "prompt-last", 0),
                                                 ("response-mean", "response-mean", 0),
                                                 ("response-all", "response-all", 0)])
def test_a_recorded_name_parses_back_to_its_position(name, kind, offset):
    position = Position.parse(name)
    assert (position.kind, position.offset) == (kind, offset) and position.name == name
    assert CaptureOptions.at_position(name).position_name == name


@pytest.mark.parametrize("name", ["first", "mean-1", "last-x", "all-2", "", "response-mean-1",
                                  "prompt-last-2"])
def test_names_no_store_records_are_refused(name):
    with pytest.raises(InputFormatError):
        Position.parse(name)


def test_each_kind_reads_its_rows_whatever_the_padding_side():
    rows, batch, token = Position("last").reduce(HIDDEN, MASK)
    torch.testing.assert_close(rows, torch.stack([HIDDEN[0, 3], HIDDEN[1, 1]]))
    assert token.tolist() == [2, 1] and batch.tolist() == [0, 1]
    rows, _, token = Position("last", 1).reduce(HIDDEN, MASK)
    torch.testing.assert_close(rows, torch.stack([HIDDEN[0, 2], HIDDEN[1, 0]]))
    assert token.tolist() == [1, 0]
    rows, _, token = Position("mean").reduce(HIDDEN, MASK)
    torch.testing.assert_close(rows, torch.stack([HIDDEN[0, 1:].mean(0), HIDDEN[1, :2].mean(0)]))
    assert token.tolist() == [-1, -1]
    rows, batch, token = Position("all").reduce(HIDDEN, MASK)
    assert batch.tolist() == [0, 0, 0, 1, 1] and token.tolist() == [0, 1, 2, 0, 1]
    assert [Position(kind).rows(5) for kind in ("last", "mean", "all")] == [1, 1, 5]
    torch.testing.assert_close(reduce_positions(HIDDEN, MASK, "last", 1)[0], Position("last", 1).reduce(HIDDEN, MASK)[0])


# template 0, user 2, assistant 3; -1 at padding (the left-padded text's response is tokens 2-3, the other's 1)
ROLES_OF = torch.tensor([[-1, 2, 3, 3], [2, 3, -1, -1]])


def test_positions_relative_to_the_response_read_its_tokens_whatever_the_padding_side():
    rows, batch, token = Position("prompt-last").reduce(HIDDEN, MASK, ROLES_OF)
    torch.testing.assert_close(rows, torch.stack([HIDDEN[0, 1], HIDDEN[1, 0]]))
    assert batch.tolist() == [0, 1] and token.tolist() == [0, 0]
    rows, _, token = Position("response-mean").reduce(HIDDEN, MASK, ROLES_OF)
    torch.testing.assert_close(rows, torch.stack([HIDDEN[0, 2:].mean(0), HIDDEN[1, 1]]))
    assert token.tolist() == [-1, -1]
    rows, batch, token = Position("response-all").reduce(HIDDEN, MASK, ROLES_OF)
    torch.testing.assert_close(rows, torch.stack([HIDDEN[0, 2], HIDDEN[0, 3], HIDDEN[1, 1]]))
    assert batch.tolist() == [0, 0, 1] and token.tolist() == [1, 2, 1]
    assert Position("response-all").rows(4, np.array([0, 2, 3, 3])) == 2 and Position("response-mean").rows(4) == 1
    with pytest.raises(InputFormatError, match="reads the assistant's response"):
        Position("response-mean").reduce(HIDDEN, MASK)


@pytest.mark.parametrize("roles, problem", [(np.array([2, 2, 0]), "none left"), (np.array([3, 3]), "none left")])
def test_a_text_without_a_response_or_a_token_before_it_is_refused_by_name(roles, problem):
    Position("prompt-last").check_tokens(3, "line 2", np.array([2, 3, 3]))
    with pytest.raises(InputFormatError, match=f"line 2: position prompt-last needs a response.*{problem}") as err:
        Position("prompt-last").check_tokens(len(roles), "line 2", roles)
    assert err.value.params == ("position",)


def test_a_text_too_short_for_its_offset_is_refused_by_name():
    Position("last", 2).check_tokens(3, "text 1")
    with pytest.raises(InputFormatError, match="text 1: text has 2 token.*offset=2") as err:
        Position("last", 2).check_tokens(2, "text 1")
    assert err.value.params == ("offset",)
    Position("mean").check_tokens(1, "text 1")


def test_layers_travel_in_the_options(tmp_path, llama, pairs_file):
    options = CaptureOptions(layers=[3, 1], position="mean", progress=False)
    assert options.layers == (3, 1)
    actstore.capture_to_store(llama, pairs_file, tmp_path / "a.zarr", options=options)
    assert actstore.open_store(tmp_path / "a.zarr")["layer"].values.tolist() == [1, 3]
    # the positional layers, when given, replace the options'
    actstore.capture_to_store(llama, pairs_file, tmp_path / "b.zarr", layers="2", options=options)
    assert actstore.open_store(tmp_path / "b.zarr")["layer"].values.tolist() == [2]
    with pytest.raises(InputFormatError, match="layers=3"):
        CaptureOptions(layers=3)
