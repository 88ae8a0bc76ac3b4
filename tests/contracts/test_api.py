"""The public API is what ``actstore.__all__`` lists, and nothing else (as httpx checks its own)."""

import types

import pytest

import actstore
from tests.conftest import PAIRS


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


# Every public callable carries a short example in its docstring, and the example runs: here, in a
# folder holding pairs.json (7 pairs), acts.zarr (the tiny Llama at layers 1 and 2) and
# v.safetensors (its ENR k=4 vector at layer 2), with model_dir the tiny Llama's folder.
PUBLIC_CALLABLES = [name for name in actstore.__all__ if callable(getattr(actstore, name))]


@pytest.fixture(scope="module")
def example_folder(tmp_path_factory, tiny_model_dirs):
    import json

    folder = tmp_path_factory.mktemp("examples")
    (folder / "pairs.json").write_text(json.dumps(PAIRS))
    model_dir = str(tiny_model_dirs["llama"])
    actstore.capture_to_store(model_dir, folder / "pairs.json", folder / "acts.zarr", layers="1,2", progress=False)
    actstore.save_vector(actstore.build_vector(folder / "acts.zarr", 2, "enr", 4), folder / "v.safetensors")
    return folder, model_dir


def test_every_public_callable_is_checked_for_an_example():
    assert len(PUBLIC_CALLABLES) >= 20 and "build_vector" in PUBLIC_CALLABLES


@pytest.mark.parametrize("name", PUBLIC_CALLABLES)
def test_each_public_name_has_a_short_example_that_runs(name, example_folder, monkeypatch):
    import doctest

    folder, model_dir = example_folder
    monkeypatch.chdir(folder)
    globs = {**{n: getattr(actstore, n) for n in actstore.__all__}, "actstore": actstore, "model_dir": model_dir}
    found = [t for t in doctest.DocTestFinder(recurse=False).find(getattr(actstore, name), name, globs=globs)
             if t.examples]
    assert found, f"actstore.{name}'s docstring has no example"
    assert sum(len(t.examples) for t in found) <= 12, "an example is short"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in found:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
