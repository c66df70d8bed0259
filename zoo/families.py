"""Imports every family module so each registers its entries. Add new families here."""
from zoo.seg import ddrnet, espnet  # noqa: F401
