"""User-facing errors.

Every mistake a user can make (a bad file, a bad flag, a store that does not fit)
raises a subclass of :class:`ActstoreError`. The CLI prints these without a
traceback and exits with status 1. Each also subclasses the builtin it resembles
so that ``except ValueError`` keeps working for library users.
"""


class ActstoreError(Exception):
    """Base class of every error actstore raises for a user mistake.

    ``param`` names the Python parameter(s) the message is about, as the
    message spells them (``offset=-1: ...``): the CLI shows them as its flags
    (``--offset -1: ...``), so the library never has to know the command line.

    >>> try:
    ...     build_vector("acts.zarr", layer=3)
    ... except ActstoreError as err:
    ...     print(err.params, isinstance(err, ValueError))
    ('layer',) True
    """

    def __init__(self, *args, param: str | tuple[str, ...] | None = None):
        super().__init__(*args)
        self.params: tuple[str, ...] = (param,) if isinstance(param, str) else tuple(param or ())


class InputFormatError(ActstoreError, ValueError):
    """A contrast-set file is malformed (names file, line and field)."""


class DatasetError(InputFormatError):
    """A contrast set's items cannot be used as asked: an A/B item whose answer or option lines
    cannot be parsed, so it has no option-swapped twin (names the file and item)."""


class ModelError(ActstoreError, ValueError):
    """A model cannot be loaded or its decoder blocks cannot be found."""


class StoreError(ActstoreError, ValueError):
    """A store is missing, of another schema, or does not fit what is appended."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """A path or group that should be an actstore store is not one."""


class StatsError(ActstoreError, ValueError):
    """Statistics are missing, stale or unusable (too few samples, non-finite)."""


class VectorError(ActstoreError, ValueError):
    """A steering vector cannot be built or read (bad k, bad file)."""


class DamagedStoreError(StoreError):
    """A store's bytes on disk do not hold what was written (a chunk missing, flipped or cut;
    attributes that do not describe the arrays). Names the store, the array and the chunk."""


class LayerNotCapturedError(StoreError, StatsError, VectorError, LookupError):
    """A layer asked for is not among a store's captured layers. (One class for every place that
    checks; it is also a StatsError and a VectorError, which those places raised before.)"""


class NoActivationsError(StoreError, StatsError, VectorError):
    """A stats-only group (moments, no rows) was asked for its activations."""
