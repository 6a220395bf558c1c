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

With only those two suppressed, a random model picks ids that the small tokenizer does not have
(BLIP's vocabulary is 30524, the tokenizer's 953): the captions decode to empty text, which is fine
for throughput but leaves a streamed answer without a single visible token. The checkpoints of the
streaming benchmark (`benchmarks.ttft`) therefore also suppress every id that is not a plain word of
the tokenizer (special and added tokens, and every id past the tokenizer), so each generated token
is a visible piece of text:

- `blip-stream`: `blip` (the same weights, the same seed) with that wider suppression; `blip`
  itself is kept as it is, so its fingerprint (and the throughput benchmark's results) stay valid.
- `florence-2-base`: Florence-2-base (231 M) from the assembled native config and the published
  768x768 image processor (577 image tokens), the tiny Florence-2-base tokenizer, and the published
  generation config (forced `<s>` first and `</s>` last, as the real model). Its head is the tied
  embedding and has no bias, and a `suppress_tokens` logits processor over ~50k ids costs more than
  a decoder step, so the bias is built into the weights: the last decoder layer's final LayerNorm
  gives one hidden unit a constant 1 (weight 0, bias 1), and that unit's column of the tied
  embedding holds -10000 for every suppressed token (0 for the others): exactly a head bias. The
  first and last tokens are still forced by the generation config, so a caption of `max_new_tokens`
  is `<s>`, `max_new_tokens - 2` visible tokens and `</s>`, and the compute is fixed.

Builds are idempotent: each directory holds `real_checkpoint.json` with a fingerprint of its
inputs (the builder's code, the published configs, the tiny tokenizer, library versions), and an
up-to-date directory is kept. A build goes to a temporary directory and is renamed
into place when complete.

    python -m benchmarks.models --out checkpoints/real              # every checkpoint
    python -m benchmarks.models --name florence-2-base              # one (repeatable)

`build_all()` without names builds the throughput benchmark's two (`DEFAULT_NAMES`); the streaming
benchmark builds its own with `build_checkpoint`. Concurrent builds of one checkpoint (two
benchmarks started at once) wait for each other on a lock file next to it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
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
    CLIPImageProcessorPil,
    Florence2Config,
    Florence2ForConditionalGeneration,
    Florence2Processor,
    GenerationConfig,
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
_FILE_KEYS = {"auto_map", "image_processor_type", "processor_class"}
"""Keys of a published processor file that say which class reads it, not how it processes."""


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


def word_ids(tokenizer: Any) -> list[int]:
    """The ids of the tokenizer's plain words: not special, not added (task, location, image tokens),
    and decoding on their own to some text (not a piece of a UTF-8 character, which shows as U+FFFD).
    Every other id of a model's vocabulary is suppressed in the streaming benchmark's checkpoints."""
    excluded = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    words = []
    for i in range(len(tokenizer)):
        text = "" if i in excluded else tokenizer.decode([i])
        if text and "\ufffd" not in text:
            words.append(i)
    return words


def suppressed_ids(tokenizer: Any, vocab_size: int) -> torch.Tensor:
    """Every id of a vocabulary of `vocab_size` that is not one of the tokenizer's plain words."""
    mask = torch.ones(vocab_size, dtype=torch.bool)
    mask[word_ids(tokenizer)] = False
    return mask.nonzero().flatten()


def _build_blip_stream(directory: Path) -> None:
    """`blip` (same seed, same weights), whose head also suppresses every id that is not a plain word of
    the tokenizer: each caption is `max_new_tokens` visible tokens."""
    with tempfile.TemporaryDirectory(dir=directory) as base:
        _build_blip(Path(base))
        model = BlipForConditionalGeneration.from_pretrained(base, dtype=torch.float32).eval()
        processor = BlipProcessor.from_pretrained(base)
    bias = model.text_decoder.cls.predictions.bias
    with torch.no_grad():
        bias[suppressed_ids(processor.tokenizer, bias.shape[0])] = SUPPRESSED_BIAS
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


def _build_florence2_base(directory: Path) -> None:
    """Florence-2-base at the published size: 768x768 images (577 image tokens), the tiny tokenizer,
    the published generation config, and captions of visible tokens only (see the module's docstring)."""
    tiny = AutoProcessor.from_pretrained(TINY_DIR / "florence-2-base")
    tokenizer = tiny.tokenizer
    published = _published("microsoft--Florence-2-base/preprocessor_config.json")
    preprocessor = {k: v for k, v in published.items() if not k.startswith("_") and k not in _FILE_KEYS}
    processor = Florence2Processor(
        image_processor=CLIPImageProcessorPil(**preprocessor),
        tokenizer=tokenizer,
        post_processor_config=tiny.post_processor_config,
    )

    published = _published("florence-community--Florence-2-base/config.assembled.json")
    config = {k: v for k, v in published.items() if not k.startswith("_")}  # `_comment`: assembled, not published
    _check_vocabulary(tokenizer, config, "Florence-2")
    bos, pad, eos = tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id
    token_ids = {
        "bos_token_id": bos,
        "pad_token_id": pad,
        "eos_token_id": eos,
        "decoder_start_token_id": eos,
        "forced_bos_token_id": bos,
        "forced_eos_token_id": eos,
    }
    config["image_token_id"] = tokenizer.image_token_id
    config["text_config"].update(token_ids)
    config["dtype"] = "float32"
    torch.manual_seed(SEED)
    model = Florence2ForConditionalGeneration(Florence2Config.from_dict(config)).eval()
    published = _published("florence-community--Florence-2-base/generation_config.json")
    generation = {k: v for k, v in published.items() if not k.startswith("_")}
    model.generation_config = GenerationConfig(**{**generation, **token_ids})

    # The head is the tied embedding, without a bias: one hidden unit of the last decoder layer's
    # output is made a constant 1, and its column of the embedding serves as the bias.
    language = model.model.language_model
    unit = language.config.d_model - 1
    norm = language.decoder.layers[-1].final_layer_norm
    embedding = language.shared.weight
    with torch.no_grad():
        norm.weight[unit] = 0.0
        norm.bias[unit] = 1.0
        embedding[:, unit] = 0.0
        embedding[suppressed_ids(tokenizer, embedding.shape[0]), unit] = SUPPRESSED_BIAS
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


BUILDERS: dict[str, tuple[Callable[[Path], None], str]] = {
    "siglip2": (_build_siglip2, "google--siglip2-base-patch16-naflex"),
    "blip": (_build_blip, "Salesforce--blip-image-captioning-base"),
    "blip-stream": (_build_blip_stream, "Salesforce--blip-image-captioning-base"),
    "florence-2-base": (_build_florence2_base, "florence-community--Florence-2-base"),
}
"""Checkpoint name -> (builder, directory of its published configs)."""
DEFAULT_NAMES = ("siglip2", "blip")
"""What `build_all()` builds without names: the throughput benchmark's checkpoints (`benchmarks.run`)."""
_TINY_NAMES = {"blip-stream": "blip"}
"""The tiny checkpoint whose tokenizer a checkpoint uses, where it is not the one of its own name."""
_HELPERS: dict[str, tuple[Callable[..., Any], ...]] = {
    "blip-stream": (_build_blip, word_ids, suppressed_ids),
    "florence-2-base": (word_ids, suppressed_ids),
}
"""Further code a builder runs, part of its fingerprint."""
_MORE_CONFIGS = {"florence-2-base": ("microsoft--Florence-2-base",)}
"""Further directories of published configs a builder reads, part of its fingerprint."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fingerprint(name: str) -> str:
    """A digest of everything the checkpoint's bytes depend on."""
    configs = resolve_real_configs() / BUILDERS[name][1]
    tiny_marker = TINY_DIR / _TINY_NAMES.get(name, name) / "tiny_checkpoint.json"
    inputs = {
        # The builder's own code and settings, not this whole file: reformatting it costs no rebuild.
        "builder": _sha256(inspect.getsource(BUILDERS[name][0]).encode()),
        "settings": {"seed": SEED, "suppressed_bias": SUPPRESSED_BIAS},
        "configs": {path.name: _sha256(path.read_bytes()) for path in sorted(configs.glob("*.json"))},
        "tiny": json.loads(tiny_marker.read_text(encoding="utf-8")).get("fingerprint"),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    # Only where there are any, so that the fingerprints of the first checkpoints stay as they were.
    if name in _HELPERS:
        inputs["helpers"] = [_sha256(inspect.getsource(helper).encode()) for helper in _HELPERS[name]]
    if name in _MORE_CONFIGS:
        inputs["more_configs"] = {
            f"{folder}/{path.name}": _sha256(path.read_bytes())
            for folder in _MORE_CONFIGS[name]
            for path in sorted((resolve_real_configs() / folder).glob("*.json"))
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
    build_tiny(TINY_DIR, names=[_TINY_NAMES.get(name, name)])
    target = Path(out_dir) / name
    fingerprint = _fingerprint(name)
    if _is_current(target, fingerprint):
        logger.info("real-size %s is up to date at %s", name, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(target):
        # Another process may have built it while this one waited for the lock.
        if _is_current(target, fingerprint):
            logger.info("real-size %s is up to date at %s", name, target)
            return target
        _build_into(name, target, fingerprint)
    return target


@contextlib.contextmanager
def _build_lock(target: Path) -> Iterator[None]:
    """An exclusive lock on `.<name>.lock` next to the checkpoint, held while it is built."""
    with open(target.parent / f".{target.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_into(name: str, target: Path, fingerprint: str) -> None:
    started = time.perf_counter()
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


def build_all(out_dir: Path = REAL_DIR, names: Iterable[str] = DEFAULT_NAMES) -> dict[str, Path]:
    """Build (or keep) these real-size checkpoints (default: the throughput benchmark's); name -> directory."""
    return {name: build_checkpoint(name, out_dir) for name in names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REAL_DIR, help="parent directory of the checkpoints")
    parser.add_argument(
        "--name", action="append", choices=sorted(BUILDERS), help="build only this checkpoint (repeatable; default all)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    build_all(args.out, args.name or tuple(BUILDERS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
