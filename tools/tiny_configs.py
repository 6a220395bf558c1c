"""The published configs the tiny checkpoints start from (`tools/real_configs`), read and overridden.

A tiny checkpoint's config is a published one with its provenance keys dropped and its sizes
overridden; everything that is not a size stays as published.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from transformers import GenerationConfig

_META_KEYS = frozenset(
    {
        "_comment",
        "_commit_hash",
        "_from_model_config",
        "_name_or_path",
        "_valid_processor_keys",
        "architectures",
        "auto_map",
        "dtype",
        "image_processor_type",
        "processor_class",
        "torch_dtype",
        "transformers_version",
    }
)
"""Keys of the published files that say where a file came from, not what the model is."""


def published(real_configs: Path, relative_path: str) -> dict[str, Any]:
    """A published config file without its provenance keys (also inside its sub-configs)."""
    return _without_meta(json.loads((real_configs / relative_path).read_text(encoding="utf-8")))


def _without_meta(data: dict[str, Any]) -> dict[str, Any]:
    return {
        key: _without_meta(value) if isinstance(value, dict) and key.endswith("_config") else value
        for key, value in data.items()
        if key not in _META_KEYS
    }


def merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied recursively: mappings merge, other values replace."""
    result = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def generation_config(real_configs: Path, sources: Iterable[str]) -> GenerationConfig:
    """The published generation configs, later files overriding earlier ones."""
    values: dict[str, Any] = {}
    for relative_path in sources:
        values.update(published(real_configs, relative_path))
    return GenerationConfig(**values)
