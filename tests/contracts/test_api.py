"""The public API is what ``actstore.__all__`` lists, and nothing else (as httpx checks its own)."""

import types
import pytest

import actstore


def test_all_lists_exactly_the_public_names_the_package_exports():
    exported = sorted(name for name, value in vars(actstore).items()
                      if (not name.startswith("_") or name == "__version__") and not isinstance(value, types.ModuleType))
    assert actstore.__all__ == exported


def test_all_is_sorted():
    assert list(actstore.__all__) == sorted(actstore.__all__)


@pytest.mark.parametrize("name", ["enr_scores", "top_k_indices", "SCHEMA_VERSION", "find_decoder_blocks"])
def test_names_that_are_not_public_are_not_attributes_of_the_package(name):
    with pytest.raises(AttributeError):
        getattr(actstore, name)
