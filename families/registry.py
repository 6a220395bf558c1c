"""The plain registry of families: the ones shipped here, plus any a config names by import path."""

from __future__ import annotations

import importlib

from families.base import Family
from families.blip import BLIP
from families.florence2 import FLORENCE2
from families.kosmos2 import KOSMOS2
from families.siglip2 import SIGLIP2

FAMILIES: dict[str, Family] = {family.name: family for family in (FLORENCE2, KOSMOS2, SIGLIP2, BLIP)}


def register(family: Family) -> Family:
    """Add a family (idempotent for the same descriptor; another family under a taken name is refused)."""
    known = FAMILIES.get(family.name)
    if known is not None and known != family:
        raise ValueError(f"another family is already registered as '{family.name}'")
    FAMILIES[family.name] = family
    return family


def load(path: str) -> Family:
    """Import a descriptor named `module:ATTRIBUTE` and register it."""
    module, _, attribute = path.partition(":")
    if not module or not attribute:
        raise ValueError(f"family path '{path}' must look like 'package.module:DESCRIPTOR'")
    try:
        family = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot import the family '{path}': {error}") from None
    if not isinstance(family, Family):
        raise ValueError(f"'{path}' is not a families.base.Family")
    return register(family)


def family_of(name: str) -> Family:
    """A registered family by name; KeyError names the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown family '{name}'; known: {', '.join(sorted(FAMILIES))}") from None


def runtime_class(family: Family) -> type:
    """The family's deployment class (imports its torch module)."""
    module, _, name = family.runtime.partition(":")
    return getattr(importlib.import_module(module), name)
