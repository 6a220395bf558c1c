"""Tiny, randomly initialised checkpoints of the served architectures, built offline.

Each checkpoint is a native transformers model with a complete processor, written with
`save_pretrained`, so it loads with the same `from_pretrained` code as the hub weights:

    AutoProcessor + AutoModelForImageTextToText   florence-2-large, florence-2-base, kosmos-2, blip
    AutoProcessor + AutoModel                     siglip2

Configurations start from the published configs (`tools/real_configs`, see its SOURCES.md)
with the sizes shrunk; what is not a size (activations, norms, token layout, the kind of image
preprocessing, generation settings) is kept. Tokenizers are trained with the `tokenizers` library
on `tiny_corpus.txt`, one per family in the style of the real one. The output text is
meaningless; shapes, token layouts and post-processing are real.

Builds are deterministic (fixed seeds, canonically ordered vocabularies: rebuilding gives identical
bytes) and idempotent: each checkpoint directory holds a `tiny_checkpoint.json` marker with a
fingerprint of everything that went into it (the builder's modules, the corpus, the published
configs, the settings, library versions), and a complete directory with a matching marker is
skipped. A build goes to a temporary directory next to the target and is renamed into place when
complete.

This module is the entry point: the catalogue of checkpoints (`CHECKPOINTS`), the idempotent
atomic build and the command line. The work is done by

    tiny_families.py     one builder per family: tokenizer, processor, shrunk config, random model
    tiny_configs.py      the published configs, read without provenance keys and overridden
    tiny_tokenizers.py   the tokenizer trainers, with their vocabularies in a canonical order

    python -m tools.tiny_checkpoints --out checkpoints/tiny
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenizers
import torch
import transformers

from tools import tiny_configs, tiny_families, tiny_tokenizers
from tools.tiny_families import build_blip, build_florence2, build_kosmos2, build_siglip2
from tools.tiny_tokenizers import CORPUS_PATH

logger = logging.getLogger(__name__)

DEFAULT_OUT_DIR = Path("checkpoints/tiny")
DEFAULT_REAL_CONFIGS = Path(__file__).resolve().parent / "real_configs"
REAL_CONFIGS_ENV = "TINY_REAL_CONFIGS"
MARKER_NAME = "tiny_checkpoint.json"
REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
)
BUILDER_SOURCES = (
    Path(__file__),
    *(Path(module.__file__) for module in (tiny_configs, tiny_families, tiny_tokenizers)),
)
"""The builder's code, all part of every fingerprint: a change to any of it may change the bytes written."""


@dataclass(frozen=True)
class TinySpec:
    """One tiny checkpoint: its directory name, the builder of its family and the settings it is built with."""

    name: str
    builder: Callable[[Path, Path, Mapping[str, Any]], None]
    settings: Mapping[str, Any]


@dataclass(frozen=True)
class BuildResult:
    """What `build_checkpoint` did for one checkpoint: `built` is False when it was already up to date."""

    name: str
    path: Path
    built: bool
    seconds: float
    size_bytes: int


_TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
_FLORENCE2_BASE_TEXT = {
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 128,
    "decoder_ffn_dim": 128,
    "max_position_embeddings": 1024,
}

CHECKPOINTS: dict[str, TinySpec] = {
    spec.name: spec
    for spec in (
        TinySpec(
            "florence-2-large",
            build_florence2,
            {
                "seed": 1,
                "sources": {
                    "config": "florence-community--Florence-2-large/config.assembled.json",
                    "preprocessor": "microsoft--Florence-2-large/preprocessor_config.json",
                    "generation": [
                        "florence-community--Florence-2-base/generation_config.json",
                        "microsoft--Florence-2-large/generation_config.json",
                    ],
                },
                "bpe_vocab_size": 1000,
                "image_size": 128,
                "text": {
                    **_FLORENCE2_BASE_TEXT,
                    "d_model": 48,
                    "encoder_layers": 3,
                    "decoder_layers": 3,
                    "encoder_ffn_dim": 192,
                    "decoder_ffn_dim": 192,
                },
                "vision": {
                    "depths": [1, 1, 2, 1],
                    "embed_dim": [12, 24, 48, 96],
                    "num_heads": [1, 2, 4, 8],
                    "num_groups": [1, 2, 4, 8],
                    "window_size": 4,
                },
            },
        ),
        TinySpec(
            "florence-2-base",
            build_florence2,
            {
                "seed": 2,
                "sources": {
                    "config": "florence-community--Florence-2-base/config.assembled.json",
                    "preprocessor": "microsoft--Florence-2-base/preprocessor_config.json",
                    "generation": ["florence-community--Florence-2-base/generation_config.json"],
                },
                "bpe_vocab_size": 1000,
                "image_size": 128,
                "text": _FLORENCE2_BASE_TEXT,
                "vision": {
                    "depths": [1, 1, 1, 1],
                    "embed_dim": [8, 16, 32, 64],
                    "num_heads": [1, 2, 4, 8],
                    "num_groups": [1, 2, 4, 8],
                    "window_size": 4,
                },
            },
        ),
        TinySpec(
            "kosmos-2",
            build_kosmos2,
            {
                "seed": 3,
                "sources": {
                    "config": "microsoft--kosmos-2-patch14-224/config.json",
                    "preprocessor": "microsoft--kosmos-2-patch14-224/preprocessor_config.json",
                    "generation": ["microsoft--kosmos-2-patch14-224/generation_config.json"],
                },
                "unigram_vocab_size": 1000,
                "image_size": 56,
                "text": {
                    "embed_dim": 32,
                    "layers": 2,
                    "attention_heads": 4,
                    "ffn_dim": 128,
                    "max_position_embeddings": 2048,
                },
                "vision": _TINY_VIT,
            },
        ),
        TinySpec(
            "siglip2",
            build_siglip2,
            {
                "seed": 4,
                "sources": {
                    "config": "google--siglip2-base-patch16-naflex/config.json",
                    "preprocessor": "google--siglip2-base-patch16-naflex/preprocessor_config.json",
                },
                "bpe_vocab_size": 1000,
                "max_num_patches": 256,
                "text": {**_TINY_VIT, "max_position_embeddings": 64},
                "vision": {**_TINY_VIT, "num_patches": 256},
            },
        ),
        TinySpec(
            "blip",
            build_blip,
            {
                "seed": 5,
                "sources": {
                    "config": "Salesforce--blip-image-captioning-base/config.json",
                    "preprocessor": "Salesforce--blip-image-captioning-base/preprocessor_config.json",
                },
                "wordpiece_vocab_size": 1000,
                "image_size": 64,
                "projection_dim": 32,
                "text": {**_TINY_VIT, "max_position_embeddings": 512, "projection_dim": 32},
                "vision": {**_TINY_VIT, "patch_size": 16},
            },
        ),
    )
}
"""Every tiny checkpoint, keyed by its directory name under the output directory."""


# Fingerprints, markers and the atomic build ---------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fingerprint(spec: TinySpec, real_configs: Path) -> dict[str, Any]:
    """The marker contents: a digest of everything a checkpoint's bytes depend on, and what it covers."""
    sources = spec.settings["sources"]
    used = sorted({sources["config"], sources["preprocessor"], *sources.get("generation", ())})
    versions = {
        "tokenizers": tokenizers.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    inputs = {
        "builder": {path.name: _sha256(path.read_bytes()) for path in BUILDER_SOURCES},
        "corpus": _sha256(CORPUS_PATH.read_bytes()),
        "real_configs": {path: _sha256((real_configs / path).read_bytes()) for path in used},
        "settings": spec.settings,
        "versions": versions,
    }
    digest = _sha256(json.dumps(inputs, sort_keys=True).encode())
    return {"name": spec.name, "fingerprint": digest, "settings": spec.settings, "versions": versions}


def _is_current(directory: Path, fingerprint: Mapping[str, Any]) -> bool:
    if not all((directory / name).is_file() for name in (MARKER_NAME, *REQUIRED_FILES)):
        return False
    try:
        marker = json.loads((directory / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker.get("fingerprint") == fingerprint["fingerprint"]


def _directory_size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def _make_readable(directory: Path) -> None:
    """Temporary directories and some saved files are private (0700/0600); checkpoints are shared data."""
    directory.chmod(0o755)
    for path in directory.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _swap_into_place(staging: Path, target: Path, fingerprint: Mapping[str, Any]) -> None:
    """Rename `staging` to `target`, retiring an outdated `target`; a concurrent identical build may win."""
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    try:
        if target.exists():
            os.replace(target, retired / target.name)
        os.replace(staging, target)
    except OSError:
        if not _is_current(target, fingerprint):
            raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)


def resolve_real_configs(real_configs: str | os.PathLike[str] | None = None) -> Path:
    """The published-configs directory: the argument, else `$TINY_REAL_CONFIGS`, else the copy kept in this package."""
    path = Path(real_configs or os.environ.get(REAL_CONFIGS_ENV) or DEFAULT_REAL_CONFIGS)
    if not (path / "SOURCES.md").is_file():
        raise FileNotFoundError(
            f"published configs not found at {path} (no SOURCES.md there); "
            f"pass real_configs / --real-configs or set {REAL_CONFIGS_ENV}"
        )
    return path


def build_checkpoint(
    name: str,
    out_dir: str | os.PathLike[str] = DEFAULT_OUT_DIR,
    *,
    real_configs: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> BuildResult:
    """Build the tiny checkpoint `name` into `out_dir/name`, unless an identical complete build is there."""
    if name not in CHECKPOINTS:
        raise ValueError(f"unknown tiny checkpoint {name!r}; choose from {', '.join(CHECKPOINTS)}")
    spec = CHECKPOINTS[name]
    configs = resolve_real_configs(real_configs)
    target = Path(out_dir) / name
    fingerprint = _fingerprint(spec, configs)
    started = time.perf_counter()
    if not force and _is_current(target, fingerprint):
        return BuildResult(name, target, False, time.perf_counter() - started, _directory_size(target))

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=target.parent))
    try:
        spec.builder(staging, configs, spec.settings)
        (staging / MARKER_NAME).write_text(json.dumps(fingerprint, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _make_readable(staging)
        _swap_into_place(staging, target, fingerprint)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BuildResult(name, target, True, time.perf_counter() - started, _directory_size(target))


def build_all(
    out_dir: str | os.PathLike[str] = DEFAULT_OUT_DIR,
    *,
    names: Iterable[str] | None = None,
    real_configs: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> list[BuildResult]:
    """Build, or keep when up to date, every tiny checkpoint (or only `names`) under `out_dir`."""
    results = []
    for name in CHECKPOINTS if names is None else names:
        result = build_checkpoint(name, out_dir, real_configs=real_configs, force=force)
        logger.info(
            "%-16s %-10s %5.2f s %5.2f MB  %s",
            result.name,
            "built" if result.built else "up to date",
            result.seconds,
            result.size_bytes / 1e6,
            result.path,
        )
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.tiny_checkpoints", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="output directory (default: %(default)s)")
    parser.add_argument("--only", nargs="+", choices=list(CHECKPOINTS), metavar="NAME", help="build only these")
    parser.add_argument(
        "--real-configs", type=Path, help=f"published configs (default: ${REAL_CONFIGS_ENV} or {DEFAULT_REAL_CONFIGS})"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when an identical build is present")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    transformers.utils.logging.disable_progress_bar()
    try:
        build_all(args.out, names=args.only, real_configs=args.real_configs, force=args.force)
    except FileNotFoundError as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
