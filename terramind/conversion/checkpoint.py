"""Conversion of the original TerraMind releases (`TerraMind_v1_*.pt`, terratorch state dicts) to this package.

Used by `scripts/convert_terramind_original_to_hf.py`, by `from_pretrained` on an original release folder or
repo (converted on the fly and cached), and by the CLI. Original files are pickles from the internet: they are
read with `torch.load(..., weights_only=True)` only.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging

from ..configuration_terramind import TERRAMIND_VARIANTS, TerraMindConfig
from ..hub import looks_like_path, resolve_source
from ..modalities import ORIGINAL_KEY_TO_NAME, RAW_IMAGE_MODALITIES
from ..scenes.outputs import partial_path, remove, remove_stale_partials
from .model_card import push_folder, write_model_card

ORIGINAL_MODEL_FILE = re.compile(r"^TerraMind_v1_(tiny|small|base|large)\.pt$")
CACHE_ENV = "TERRAMIND_CACHE"
logger = logging.get_logger(__name__)


class ConversionError(ValueError):
    """A file or state dict that is not what the conversion expects (one-line message for users)."""


def default_cache_dir() -> Path:
    base = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "terramind")
    return Path(base)


def check_checkpoint_file(path: str | os.PathLike) -> Path:
    """`path` as a Path if it is a file; a ConversionError that says what is there otherwise."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p.name for p in path.glob("*.pt"))
        hint = f" ({', '.join(files[:3])} there)" if files else ""
        raise ConversionError(f"Checkpoint {path} is a folder; give the checkpoint file in it{hint}.")
    if not path.is_file():
        raise ConversionError(f"Checkpoint {path} does not exist.")
    return path


def load_original_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an original checkpoint safely (no code execution) and unwrap `{"model": ...}` containers."""
    path = check_checkpoint_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not a plain state dict"
        raise ConversionError(f"{path} is not a PyTorch state dict readable with weights_only=True "
                              f"({type(error).__name__}).") from None  # fmt: skip
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path} does not hold a state dict of tensors.")
    return state


# ----------------------------------------------------------------------------- model checkpoints
_RENAMES = (
    (re.compile(r"^encoder\.(\d+)\.attn\."), r"terramind.encoder.layer.\1.attention."),
    (re.compile(r"^encoder\.(\d+)\."), r"terramind.encoder.layer.\1."),
    (re.compile(r"^encoder_norm\."), "terramind.layernorm."),
    (re.compile(r"^decoder\.(\d+)\.self_attn\."), r"decoder.layer.\1.self_attention."),
    (re.compile(r"^decoder\.(\d+)\.cross_attn\."), r"decoder.layer.\1.cross_attention."),
    (re.compile(r"^decoder\.(\d+)\."), r"decoder.layer.\1."),
    (re.compile(r"^decoder_norm\."), "decoder_layernorm."),
)
_NORM_BIAS = re.compile(r"norm\d?\.bias$")


def is_original_terramind_state_dict(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("encoder.0.") for k in state) and any(k.startswith("encoder_embeddings.") for k in state)


def infer_config(state: dict[str, torch.Tensor], variant: str | None = None, **overrides: Any) -> TerraMindConfig:
    """Config for an original state dict: sizes, depths, biases and MLP kind from the shapes, the rest
    (heads, activation) from `variant` or `overrides` (e.g. `num_attention_heads` for narrow checkpoints)."""
    if not is_original_terramind_state_dict(state):
        raise ConversionError("This is not a TerraMind model checkpoint (no encoder blocks/embeddings found).")
    hidden = state["encoder.0.norm1.weight"].shape[0]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("encoder.") and k.split(".")[1].isdigit())
    dec_ids = [int(k.split(".")[1]) for k in state if k.startswith("decoder.") and k.split(".")[1].isdigit()]
    gated = "encoder.0.mlp.fc3.weight" in state
    shapes = dict(
        hidden_size=hidden,
        num_hidden_layers=depth,
        num_decoder_layers=1 + max(dec_ids) if dec_ids else 0,
        intermediate_size=state["encoder.0.mlp.fc1.weight"].shape[0],
        gated_mlp=gated,
        qkv_bias="encoder.0.attn.qkv.bias" in state,
        proj_bias="encoder.0.attn.proj.bias" in state,
        mlp_bias="encoder.0.mlp.fc1.bias" in state,
    )
    params: dict[str, Any] = {}
    if variant is not None:
        if variant not in TERRAMIND_VARIANTS:
            raise ConversionError(f"Unknown variant {variant!r}; expected one of {', '.join(TERRAMIND_VARIANTS)}.")
        preset = TERRAMIND_VARIANTS[variant]
        for name in ("hidden_size", "num_hidden_layers", "num_decoder_layers", "gated_mlp", "qkv_bias"):
            if name in overrides:
                continue
            if preset[name] != shapes[name]:
                raise ConversionError(f"The checkpoint does not match variant {variant!r}: {name} is "
                                      f"{shapes[name]} in the file, {preset[name]} in the variant.")  # fmt: skip
        params.update(preset, variant=variant)
    else:
        params.update(hidden_act="silu" if gated else "gelu")
        if "num_attention_heads" not in overrides:
            matches = [v for v in TERRAMIND_VARIANTS.values() if v["hidden_size"] == hidden]
            if not matches:
                raise ConversionError(f"Hidden size {hidden} matches no released variant; give the number of "
                                      f"attention heads (--num-heads) or a --config JSON.")  # fmt: skip
            params["num_attention_heads"] = matches[0]["num_attention_heads"]
    params.update(shapes)
    params.setdefault("modalities", [m for m in RAW_IMAGE_MODALITIES if _has_embedding(state, m)])
    params.update(overrides)
    return TerraMindConfig(**params)


def _has_embedding(state: dict[str, torch.Tensor], name: str) -> bool:
    key = next(k for k, v in ORIGINAL_KEY_TO_NAME.items() if v == name)
    return f"encoder_embeddings.{key}.mod_emb" in state


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original keys -> TerraMindForGeneration keys (encoder under `terramind.`).

    Dropped: zero LayerNorm bias buffers, the fixed sin-cos `pos_emb` buffers (rebuilt by the model) and the
    tied copies (decoder `mod_emb` = encoder `mod_emb`, `to_logits` = decoder `token_emb`).
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if _NORM_BIAS.search(key):
            if not value.is_meta and value.abs().max() > 0:
                raise ConversionError(f"{key} is non-zero; TerraMind v1 LayerNorms have no bias.")
            continue
        emb = re.match(r"^(encoder|decoder)_embeddings\.([^.]+)\.(.+)$", key)
        if emb:
            side, original, rest = emb.groups()
            if original not in ORIGINAL_KEY_TO_NAME:
                unknown.append(key)
                continue
            name = ORIGINAL_KEY_TO_NAME[original]
            if rest == "pos_emb":
                continue
            if side == "decoder" and rest in ("mod_emb", "to_logits.weight"):
                continue  # tied: restored by the model from the encoder mod_emb / decoder token_emb
            prefix = "terramind.encoder_embeddings" if side == "encoder" else "decoder_embeddings"
            out[f"{prefix}.{name}.{rest}"] = value
            continue
        new = key
        for pattern, replacement in _RENAMES:
            new, count = pattern.subn(replacement, new)
            if count:
                break
        if new == key and key not in ("mask_token",) and not key.startswith("decoder_proj_context."):
            unknown.append(key)
            continue
        out[new] = value
    if unknown:
        raise ConversionError(f"Unexpected keys in the checkpoint (not TerraMind v1?): {unknown[:5]}")
    return out


def convert_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    variant: str | None = None,
    config_overrides: dict[str, Any] | None = None,
    push_to_hub: str | None = None,
) -> Path:
    """Convert `TerraMind_v1_*.pt` into a folder that TerraMindModel, TerraMindForGeneration and the TiM
    models all load (config.json + model.safetensors with every weight of the original)."""
    from ..image_processing_terramind import TerraMindImageProcessor
    from ..modeling_terramind import TerraMindForGeneration
    from ..processing_terramind import TerraMindProcessor

    state = load_original_state_dict(checkpoint)
    overrides = config_overrides or {}
    if variant is not None:
        config = infer_config(state, variant, **overrides)
    else:  # a released file name implies its variant; a file of other shapes is inferred from its shapes
        match = ORIGINAL_MODEL_FILE.match(Path(checkpoint).name)
        try:
            config = infer_config(state, match.group(1) if match else None, **overrides)
        except ConversionError:
            if not match:
                raise
            config = infer_config(state, None, **overrides)
    converted = convert_state_dict(state)
    model = TerraMindForGeneration(config)
    try:
        missing, unexpected = model.load_state_dict(converted, strict=False)
    except RuntimeError as error:
        detail = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error))
        raise ConversionError(f"The checkpoint does not fit a TerraMind v1 model: {detail}") from None
    missing = [k for k in missing if not _is_tied(model, k)]
    absent_embeddings = sorted({k.split(".")[-3] if ".token_emb." in k else k.split(".")[-2] for k in missing
                                if "embeddings." in k})  # fmt: skip
    missing = [k for k in missing if "embeddings." not in k]
    if missing or unexpected:
        raise ConversionError(f"Converted weights do not fit the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}.")  # fmt: skip
    if absent_embeddings:
        logger.warning(f"The checkpoint has no embeddings for {', '.join(absent_embeddings)}; they stay randomly "
                       "initialized (fine unless you use those modalities).")  # fmt: skip
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    TerraMindProcessor(image_processor=TerraMindImageProcessor(default_modality=_first_name(config.modalities))
                       ).save_pretrained(output_dir)  # fmt: skip
    write_model_card(output_dir, str(checkpoint), "encoder and generator", config.modalities, "AutoModel",
                     "TerraMindModel")  # fmt: skip
    if push_to_hub:
        push_folder(output_dir, push_to_hub)
    return output_dir


def _first_name(modalities: list[Any]) -> str:
    first = modalities[0]
    return first if isinstance(first, str) else next(iter(first))


def _is_tied(model: torch.nn.Module, key: str) -> bool:
    return key in (getattr(model, "_tied_weights_keys", None) or {})


def find_release_file(folder: str | os.PathLike, pattern: re.Pattern) -> Path | None:
    """The original checkpoint (file name matching `pattern`) of a release folder without config.json, else None."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / "config.json").exists():
        return None
    return next((c for c in sorted(folder.iterdir()) if pattern.match(c.name)), None)


def resolve_release(
    name_or_path: str | os.PathLike,
    pattern: re.Pattern,
    convert: Callable[[Path, Path], Any],
    guess_file: Callable[[str], str | None] = lambda repo_id: None,
    **hub_kwargs: Any,
) -> str | None:
    """If `name_or_path` is an original release — a checkpoint file matching `pattern`, or a folder or Hub repo
    holding one and no config.json — convert it once into the cache (atomically; keyed by the file's content and the
    converter's version) and return the converted folder. A name that looks like a path and is missing raises
    FileNotFoundError; a `~` path is returned expanded; anything else gives None and is left to Transformers (a Hub
    id after one check that the Hub is reachable, see `hub.resolve_source`)."""
    source = resolve_source(name_or_path, local_files_only=bool(hub_kwargs.get("local_files_only")))
    expanded = source if source != str(name_or_path) else None
    path = Path(source)
    if looks_like_path(name_or_path) and path.is_file():
        checkpoint = path if pattern.match(path.name) else None
    elif looks_like_path(name_or_path):
        checkpoint = find_release_file(path, pattern)
    else:
        checkpoint = _download_release_file(source, pattern, guess_file, **hub_kwargs)
    if checkpoint is None:
        return expanded
    checkpoint = checkpoint.absolute()  # not resolved: a Hub cache symlink keeps the release's file name
    key = hashlib.sha256(f"{content_digest(checkpoint)}|{converter_version()}".encode()).hexdigest()[:16]
    target = default_cache_dir() / "converted" / f"{checkpoint.stem}-{key}"
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)  # with the umask's permissions, so a group can share it
        remove_stale_partials(target, every_target=True)  # of any killed conversion, not only of this one
        remove_legacy_staging(target.parent)
        staging = partial_path(target)
        staging.mkdir()
        try:
            convert(checkpoint, staging)
            _permissions_of_umask(staging)
            try:
                os.replace(staging, target)
            except OSError:  # converted meanwhile by another process
                if not (target / "config.json").exists():
                    raise
        finally:
            remove(staging)
    return str(target)


def _permissions_of_umask(folder: Path) -> None:
    """Give the files of `folder` the umask's permissions, which `mkdir` gave the folder (writers such as
    safetensors create 0600 files), so that a cache shared by a group (umask 002) serves the whole group."""
    mode = folder.stat().st_mode & 0o777
    for path in folder.rglob("*"):
        path.chmod(mode if path.is_dir() else mode & 0o666)


# The modules (paths under terramind/) whose code decides what a converted folder holds: a change to any of them
# is a new converter version.
CONVERTER_MODULES = ("conversion/checkpoint.py", "conversion/tokenizer.py", "configuration_terramind.py",
                     "configuration_terramind_tokenizer.py", "modalities.py", "modeling_terramind.py",
                     "modeling_terramind_tokenizer.py", "processing_terramind.py", "image_processing_terramind.py")  # fmt: skip
_HUB_BLOB = re.compile(r"^[0-9a-f]{64}$")


@functools.cache
def converter_version() -> str:
    """Digest of the converter's code: part of the cache key, so that a fixed converter reconverts old caches."""
    digest = hashlib.sha256()
    for name in CONVERTER_MODULES:
        digest.update((Path(__file__).parents[1] / name).read_bytes())
    return digest.hexdigest()[:16]


def content_digest(path: Path) -> str:
    """SHA-256 of a file's content; for a file of the Hub cache, the blob's name, which is that SHA-256 already."""
    target = path.resolve()
    if target != path and target.parent.name == "blobs" and _HUB_BLOB.match(target.name):
        return target.name
    digest = hashlib.sha256()
    with open(target, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


_LEGACY_STAGING = re.compile(r"^\.TerraMind_.+-[a-z0-9_]{8}$")  # tempfile.mkdtemp folders of earlier versions


def remove_legacy_staging(folder: Path, older_than_s: float = 3600.0) -> None:
    """Remove staging folders that conversions of earlier versions left behind when killed."""
    now = time.time()
    for candidate in folder.iterdir():
        if _LEGACY_STAGING.match(candidate.name) and candidate.is_dir():
            if now - candidate.stat().st_mtime > older_than_s:
                remove(candidate)


def _download_release_file(
    repo_id: str, pattern: re.Pattern, guess_file: Callable[[str], str | None], **hub_kwargs: Any
) -> Path | None:
    """Download the original checkpoint of a Hub repo without config.json; offline, use the Hub cache."""
    if repo_id.count("/") != 1:
        return None
    from huggingface_hub import hf_hub_download, list_repo_files

    download = {k: hub_kwargs[k] for k in ("token", "revision", "cache_dir") if hub_kwargs.get(k) is not None}
    name = None
    try:
        if hub_kwargs.get("local_files_only"):
            raise OSError("offline")
        files = list_repo_files(repo_id, token=download.get("token"), revision=download.get("revision"))
        if "config.json" in files:
            return None
        name = next((f for f in files if pattern.match(f)), None)
        return Path(hf_hub_download(repo_id, name, **download)) if name else None
    except Exception:  # noqa: BLE001 - offline or not a repo: try the cache, else let transformers report
        name = name or guess_file(repo_id)
        if name is None:
            return None
        try:
            return Path(hf_hub_download(repo_id, name, local_files_only=True, **download))
        except Exception:  # noqa: BLE001
            return None


_HUB_MODEL_VARIANT = re.compile(r"TerraMind-1\.0-(tiny|small|base|large)$")


def resolve_original_release(name_or_path: str | os.PathLike, **hub_kwargs: Any) -> str | None:
    """An original model release (`TerraMind_v1_*.pt`) converted once into the cache, else None."""

    def guess(repo_id: str) -> str | None:
        match = _HUB_MODEL_VARIANT.search(repo_id)
        return f"TerraMind_v1_{match.group(1)}.pt" if match else None

    return resolve_release(name_or_path, ORIGINAL_MODEL_FILE, convert_checkpoint, guess, **hub_kwargs)
