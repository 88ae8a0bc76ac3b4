import actstore


def test_public_api_is_sorted_and_importable():
    assert list(actstore.__all__) == sorted(actstore.__all__)
    for name in actstore.__all__:
        assert hasattr(actstore, name), name
