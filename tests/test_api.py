"""The public API is what ``actstore.__all__`` lists, and nothing else (as httpx checks its own)."""

import types
import warnings

import pytest

import actstore


def test_all_lists_exactly_the_public_names_the_package_exports():
    exported = sorted(name for name, value in vars(actstore).items()
                      if (not name.startswith("_") or name == "__version__") and not isinstance(value, types.ModuleType))
    assert actstore.__all__ == exported


def test_all_is_sorted():
    assert list(actstore.__all__) == sorted(actstore.__all__)


@pytest.mark.parametrize("name", ["enr_scores", "top_k_indices", "SCHEMA_VERSION", "find_decoder_blocks"])
def test_names_no_longer_public_still_import_with_a_warning(name):
    with pytest.warns(DeprecationWarning, match=f"actstore.{name} is deprecated"):
        value = getattr(actstore, name)
    assert value is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="no attribute 'nope'"):
            actstore.nope  # noqa: B018
