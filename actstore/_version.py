__version__ = "0.1.0"

# Bumped whenever the on-disk layout of a store changes incompatibly.
SCHEMA_VERSION = 1
