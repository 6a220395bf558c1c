"""Real-size, randomly initialised checkpoints of the benchmarked architectures, built offline.

The sizes come from the published configs in `tools/real_configs/` (see its SOURCES.md):
SigLIP2 base naflex (375 M parameters) and BLIP base captioning (224 M). The tokenizers are the
small ones trained for the tiny checkpoints (`tools.tiny_checkpoints`); both models' vocabularies are
larger than those tokenizers, so every token id is valid. The image processors are the published
ones (SigLIP2: 16-pixel patches, at most 256 of them; BLIP: 384x384).

BLIP's `generate` runs its text decoder with the decoder's own generation config, so a
`min_new_tokens` in the checkpoint's `generation_config.json` would not reach it. To make every
caption exactly `max_new_tokens` long on every system (the gateway cannot pass `min_new_tokens`
over HTTP) the checkpoint's language-model head gets a bias of -10000 on the tokens that end or
pad a caption ([SEP], which BLIP uses as end of sequence, and [PAD]). Greedy decoding then never
picks them, and the compute per caption is fixed. With random weights the text is meaningless anyway.

Builds are idempotent: each directory holds `real_checkpoint.json` with a fingerprint of its
inputs (the builder's code, the published configs, the tiny tokenizer, library versions), and an
up-to-date directory is kept. A build goes to a temporary directory and is renamed
into place when complete.

    python -m benchmarks.models --out checkpoints/real
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessorPil,
    BlipProcessor,
    Siglip2Config,
    Siglip2Model,
)

from tools.tiny_checkpoints import build_all as build_tiny
from tools.tiny_checkpoints import resolve_real_configs

logger = logging.getLogger("benchmarks.models")

ROOT = Path(__file__).resolve().parent.parent
REAL_DIR = ROOT / "checkpoints" / "real"
TINY_DIR = ROOT / "checkpoints" / "tiny"
MARKER_NAME = "real_checkpoint.json"
SUPPRESSED_BIAS = -10000.0
SEED = 0

_PROVENANCE_KEYS = {"_commit_hash", "_name_or_path", "architectures", "torch_dtype", "transformers_version"}


def _published(relative_path: str) -> dict[str, Any]:
    """A published config file without the keys that say where it came from."""
    data = json.loads((resolve_real_configs() / relative_path).read_text(encoding="utf-8"))
    return _without_provenance(data)


def _without_provenance(data: dict[str, Any]) -> dict[str, Any]:
    return {
        key: _without_provenance(value) if isinstance(value, dict) else value
        for key, value in data.items()
        if key not in _PROVENANCE_KEYS
    }


def _check_vocabulary(tokenizer: Any, config: dict[str, Any], family: str) -> None:
    """The tiny tokenizer's ids must all be rows of the real-size model's embedding."""
    vocab_size = config["text_config"]["vocab_size"]
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"the tiny {family} tokenizer ({len(tokenizer)} tokens) exceeds the model's vocabulary ({vocab_size})"
        )


def _build_siglip2(directory: Path) -> None:
    """SigLIP2 base naflex at the published size, with the tiny checkpoint's processor (256-patch budget)."""
    processor = AutoProcessor.from_pretrained(TINY_DIR / "siglip2")
    tokenizer = processor.tokenizer
    config = _published("google--siglip2-base-patch16-naflex/config.json")
    _check_vocabulary(tokenizer, config, "SigLIP2")
    config["text_config"].update(
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    config["dtype"] = "float32"
    torch.manual_seed(SEED)
    model = Siglip2Model(Siglip2Config.from_dict(config)).eval()
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


def _build_blip(directory: Path) -> None:
    """BLIP base captioning at the published size: 384x384 images, the tiny tokenizer, fixed-length captions."""
    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR / "blip")
    preprocessor = _published("Salesforce--blip-image-captioning-base/preprocessor_config.json")
    for key in ("image_processor_type", "processor_class"):
        preprocessor.pop(key, None)
    side = preprocessor.pop("size")
    processor = BlipProcessor(BlipImageProcessorPil(**preprocessor, size={"height": side, "width": side}), tokenizer)

    config = _published("Salesforce--blip-image-captioning-base/config.json")
    _check_vocabulary(tokenizer, config, "BLIP")
    config["text_config"].update(
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        sep_token_id=tokenizer.sep_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    config["dtype"] = "float32"
    torch.manual_seed(SEED)
    model = BlipForConditionalGeneration(BlipConfig.from_dict(config)).eval()
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[[tokenizer.sep_token_id, tokenizer.pad_token_id]] = SUPPRESSED_BIAS
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


BUILDERS: dict[str, tuple[Callable[[Path], None], str]] = {
    "siglip2": (_build_siglip2, "google--siglip2-base-patch16-naflex"),
    "blip": (_build_blip, "Salesforce--blip-image-captioning-base"),
}
"""Checkpoint name -> (builder, directory of its published configs)."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fingerprint(name: str) -> str:
    """A digest of everything the checkpoint's bytes depend on."""
    configs = resolve_real_configs() / BUILDERS[name][1]
    tiny_marker = TINY_DIR / name / "tiny_checkpoint.json"
    inputs = {
        # The builder's own code and settings, not this whole file: reformatting it costs no rebuild.
        "builder": _sha256(inspect.getsource(BUILDERS[name][0]).encode()),
        "settings": {"seed": SEED, "suppressed_bias": SUPPRESSED_BIAS},
        "configs": {path.name: _sha256(path.read_bytes()) for path in sorted(configs.glob("*.json"))},
        "tiny": json.loads(tiny_marker.read_text(encoding="utf-8")).get("fingerprint"),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    return _sha256(json.dumps(inputs, sort_keys=True).encode())


def _is_current(directory: Path, fingerprint: str) -> bool:
    marker = directory / MARKER_NAME
    if not (marker.is_file() and (directory / "model.safetensors").is_file()):
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        return False


def _make_readable(directory: Path) -> None:
    """Temporary directories and saved weights are private (0700/0600); checkpoints are shared data."""
    directory.chmod(0o755)
    for path in directory.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def build_checkpoint(name: str, out_dir: Path = REAL_DIR) -> Path:
    """Build the real-size checkpoint `name` into `out_dir/name` unless an up-to-date one is there."""
    if name not in BUILDERS:
        raise ValueError(f"unknown checkpoint {name!r}; choose from {', '.join(BUILDERS)}")
    build_tiny(TINY_DIR, names=[name])
    target = Path(out_dir) / name
    fingerprint = _fingerprint(name)
    if _is_current(target, fingerprint):
        logger.info("real-size %s is up to date at %s", name, target)
        return target
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=target.parent))
    try:
        BUILDERS[name][0](staging)
        marker = {"name": name, "fingerprint": fingerprint, "seed": SEED}
        (staging / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _make_readable(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("built real-size %s at %s in %.1fs", name, target, time.perf_counter() - started)
    return target


def build_all(out_dir: Path = REAL_DIR) -> dict[str, Path]:
    """Build (or keep) every real-size checkpoint; name -> directory."""
    return {name: build_checkpoint(name, out_dir) for name in BUILDERS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REAL_DIR, help="parent directory of the checkpoints")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    build_all(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
