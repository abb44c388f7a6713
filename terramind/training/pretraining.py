"""Continued pre-training of the generator with 4M's any-to-any objective (`terramind pretrain`).

TerraMind is pre-trained as 4M is (Mizrahi et al., "4M: Massively Multimodal Masked Modeling", NeurIPS 2023;
TerraMind paper, arXiv:2504.11171, Sec. 3: "a masked modeling approach in the token space ... reconstructs
randomly selected target tokens from randomly selected input tokens", following 4M). Per sample:

1. an input token budget and a target token budget are drawn;
2. each budget is spread over the modalities the sample has with a symmetric Dirichlet(`dirichlet_alpha`) (4M's
   `UnifiedMasking.input_token_budget` / `target_token_budget`, ml-4m `fourm/data/masking.py`): a small alpha gives
   most of a budget to one modality, a large one spreads it evenly; a modality's share is capped at its tokens and
   what a cap cuts goes to the others;
3. per modality, random tokens become inputs (raw patches of image modalities, token ids of tokenized ones and of
   Coordinates, the tile centre's "lat=... lon=..." text tokens, as 4M's text modalities but without its spans) and
   other random tokens — never those given as inputs, also when a modality is both an input (raw) and a target
   (tokens) — become targets;
4. the loss is the cross-entropy of the target tokens (the generator's `forward` with `input_masks` /
   `target_masks`: per target modality the mean over its tokens, summed over the target modalities), logged per
   target modality (`loss_<MODALITY>`, `eval_loss_<MODALITY>`, `eval_token_accuracy_<MODALITY>`).

The original's pre-training code is not released; where this differs from 4M it says so below and in the README.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

from ..modalities import MODALITIES, resolve_modality, resolve_output_modality, token_modality
from .pretraining_data import build_pretraining_dataset, is_coordinates, is_tokenized_input, list_samples

logger = logging.getLogger(__name__)

# 4M-B/L defaults (Mizrahi et al. 2023, Sec. 3.2 and Table 6 of its appendix): 128 input and 128 target tokens per
# sample, symmetric Dirichlet alpha 0.2 for both. The TerraMind paper states that it follows 4M's masking; its
# exact budgets are not given in the text available here, so 4M's are the defaults.
DEFAULT_INPUT_BUDGET = 128
DEFAULT_TARGET_BUDGET = 128
DEFAULT_DIRICHLET_ALPHA = 0.2


# ----------------------------------------------------------------------------- the objective
def spread_budget(budget: int, capacity: Sequence[int], alpha: float | None) -> list[int]:
    """`budget` tokens over modalities with `capacity` tokens each: shares from a symmetric Dirichlet(alpha) (equal
    shares for alpha None), rounded
    down, the remainder and whatever a capacity cuts handed out in proportion to the same shares among the
    modalities with room left (4M floors the shares, adds the remainder by Dirichlet argmax draws and clamps, losing
    what the clamp cuts). Returns counts that sum to min(budget, sum(capacity))."""
    capacity = torch.as_tensor(capacity, dtype=torch.long)
    if len(capacity) == 0 or budget <= 0:
        return [0] * len(capacity)
    if alpha is None:
        shares = torch.ones(len(capacity))
    else:
        shares = torch.distributions.Gamma(torch.full((len(capacity),), float(alpha)), torch.ones(len(capacity))).sample()
    shares = shares / shares.sum() if shares.sum() > 0 else torch.full_like(shares, 1 / len(shares))
    counts = torch.minimum((shares * budget).floor().long(), capacity)
    left = min(budget, int(capacity.sum())) - int(counts.sum())
    while left > 0:
        room = capacity - counts
        weights = torch.where(room > 0, shares + 1e-12, torch.zeros_like(shares))
        pick = torch.multinomial(weights, left, replacement=True)
        counts = torch.minimum(counts + torch.bincount(pick, minlength=len(counts)), capacity)
        left = min(budget, int(capacity.sum())) - int(counts.sum())
    return counts.tolist()


@dataclass
class AnyToAnyMasking:
    """4M's per-sample choice of input and target tokens.

    Args:
        input_budget: input tokens per sample, over all its input modalities (4M: 128).
        target_budget: target tokens per sample, over all its target modalities (4M: 128).
        dirichlet_alpha: concentration of the symmetric Dirichlet that spreads each budget over the modalities
            (4M: 0.2; 1.0 is uniform over the simplex, large values split evenly).
    """

    input_budget: int = DEFAULT_INPUT_BUDGET
    target_budget: int = DEFAULT_TARGET_BUDGET
    dirichlet_alpha: float = DEFAULT_DIRICHLET_ALPHA

    def __post_init__(self) -> None:
        if self.input_budget < 1 or self.target_budget < 1:
            raise ValueError(f"input_budget and target_budget must be >= 1, got {self.input_budget} and "
                             f"{self.target_budget}.")  # fmt: skip
        if not self.dirichlet_alpha > 0:
            raise ValueError(f"dirichlet_alpha must be > 0, got {self.dirichlet_alpha}.")

    def sample(self, num_tokens: Mapping[str, int], inputs: Sequence[str], targets: Sequence[str],
               even: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:  # fmt: skip
        """Masks for one sample. `num_tokens`: the modalities it has -> their token count; `inputs` / `targets`:
        which of them may be inputs / targets; `even`: equal shares instead of Dirichlet draws (evaluation, so
        that every target modality is scored). Returns (input masks, target masks), modality -> (N,) bool."""
        alpha = None if even else self.dirichlet_alpha
        can_input = [m for m in num_tokens if m in inputs]
        can_target = [m for m in num_tokens if m in targets]
        given = dict(zip(can_input, spread_budget(self.input_budget, [num_tokens[m] for m in can_input], alpha),
                         strict=True))  # fmt: skip
        room = [num_tokens[m] - given.get(m, 0) for m in can_target]
        wanted = dict(zip(can_target, spread_budget(self.target_budget, room, alpha), strict=True))
        input_masks, target_masks = {}, {}
        for name, count in num_tokens.items():
            order = torch.randperm(count)
            first, then = given.get(name, 0), wanted.get(name, 0)
            if name in inputs:
                input_masks[name] = torch.zeros(count, dtype=torch.bool).index_fill_(0, order[:first], True)
            if name in targets:
                target_masks[name] = torch.zeros(count, dtype=torch.bool).index_fill_(0, order[first:first + then],
                                                                                      True)  # fmt: skip
        return input_masks, target_masks


@dataclass
class AnyToAnyCollator:
    """Batches pre-training rows and draws each sample's input and target tokens (in the loader workers).

    The batch is what `TerraMindForGeneration.forward` takes: `pixel_values` (raw inputs), `input_tokens`
    (tokenized inputs), `labels` (target token grids), `input_masks` and `target_masks`. A modality a sample lacks
    is zeros with every token masked out; one that no sample of the batch has is left out. Rows with a `mask_seed`
    (evaluation) draw the same tokens every time, the budgets split evenly over the modalities.
    """

    masking: AnyToAnyMasking
    input_modalities: Sequence[str]
    target_modalities: Sequence[str]
    patch_size: int = 16
    sequence_tokens: Mapping[str, int] = field(default_factory=dict)  # Coordinates: its tokenized length

    def __call__(self, features: list[Mapping[str, Any]]) -> dict[str, Any]:
        drawn = [self._draw(feature) for feature in features]
        batch: dict[str, Any] = {"pixel_values": {}, "input_tokens": {}, "labels": {}, "input_masks": {},
                                 "target_masks": {}}  # fmt: skip
        for name in self.input_modalities:
            kind = "input_tokens" if is_tokenized_input(name) else "pixel_values"
            values = [f["tokens" if kind == "input_tokens" else "pixel_values"].get(name) for f in features]
            if all(v is None for v in values):
                continue
            like = next(v for v in values if v is not None)
            batch[kind][name] = torch.stack([v if v is not None else torch.zeros_like(like) for v in values])
            batch["input_masks"][name] = torch.stack([masks[0][name] for masks in drawn])
        for name in self.target_modalities:
            values = [f["tokens"].get(name) for f in features]
            if all(v is None for v in values):
                continue
            like = next(v for v in values if v is not None)
            batch["labels"][name] = torch.stack([v if v is not None else torch.full_like(like, -100) for v in values])
            batch["target_masks"][name] = torch.stack([masks[1][name] for masks in drawn])
        return {key: value for key, value in batch.items() if value}

    def _draw(self, feature: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The masks of one sample over every configured modality (all False where it lacks one)."""
        grid = self._grid(feature)
        sizes = {name: self.sequence_tokens.get(name, grid[0] * grid[1])
                 for name in dict.fromkeys([*self.input_modalities, *self.target_modalities])}  # fmt: skip
        inputs = [m for m in self.input_modalities
                  if feature["tokens" if is_tokenized_input(m) else "pixel_values"].get(m) is not None]  # fmt: skip
        targets = [m for m in self.target_modalities if feature["tokens"].get(m) is not None]
        present = {name: sizes[name] for name in dict.fromkeys([*inputs, *targets])}
        seed = feature.get("mask_seed")
        if seed is None:
            masks = self.masking.sample(present, inputs, targets)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                masks = self.masking.sample(present, inputs, targets, even=True)
        return ({m: masks[0].get(m, torch.zeros(sizes[m], dtype=torch.bool)) for m in self.input_modalities},
                {m: masks[1].get(m, torch.zeros(sizes[m], dtype=torch.bool)) for m in self.target_modalities})  # fmt: skip

    def _grid(self, feature: Mapping[str, Any]) -> tuple[int, int]:
        for value in feature["pixel_values"].values():
            if value is not None and value.ndim == 3:
                return value.shape[-2] // self.patch_size, value.shape[-1] // self.patch_size
        for value in feature["tokens"].values():
            if value is not None:
                return tuple(value.shape[-2:])
        raise ValueError(f"Sample {feature.get('sample_id')!r} has no modality.")


# ----------------------------------------------------------------------------- Trainer
def target_statistics(outputs: Any, labels: Mapping[str, torch.Tensor], targets: Sequence[str]) -> torch.Tensor:
    """(B, T, 3) per sample and target (in `targets` order): summed cross-entropy, correct tokens, scored tokens."""
    batch = next(iter(labels.values())).shape[0]
    stats = torch.zeros(batch, len(targets), 3)
    for index, name in enumerate(targets):
        if name not in (outputs.logits or {}):
            continue
        logits = outputs.logits[name].float()
        positions = outputs.predicted_positions[name]
        wanted = labels[name].flatten(1).to(logits.device).gather(1, positions.clamp(min=0))
        wanted = wanted.masked_fill(positions < 0, -100)
        scored = wanted != -100
        loss = F.cross_entropy(logits.flatten(0, 1), wanted.flatten(), ignore_index=-100, reduction="none")
        stats[:, index, 0] = (loss.view_as(wanted) * scored).sum(1).cpu()
        stats[:, index, 1] = ((logits.argmax(-1) == wanted) & scored).sum(1).cpu().float()
        stats[:, index, 2] = scored.sum(1).cpu().float()
    return stats


class PretrainingTrainer(Trainer):
    """`Trainer` for the any-to-any objective: logs the training loss per target modality (`loss_<MODALITY>`) and
    evaluates the masked-token loss and token accuracy per target modality."""

    def __init__(self, *args: Any, target_modalities: Sequence[str], **kwargs: Any):
        self.target_modalities = list(target_modalities)
        kwargs.setdefault("compute_metrics", self._metrics)
        super().__init__(*args, **kwargs)
        self._train_stats = torch.zeros(len(self.target_modalities), 3)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        if model.training:
            with torch.no_grad():
                self._train_stats += target_statistics(outputs, inputs["labels"], self.target_modalities).sum(0)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """6 x parameters x the tokens in play (the encoder's inputs and the decoder's targets), as Trainer counts
        a language model's."""
        tokens = sum(int(mask.sum()) for key in ("input_masks", "target_masks") for mask in inputs.get(key, {}).values())
        return 6 * tokens * self.model.num_parameters(exclude_embeddings=True)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs:  # every process logs at the same steps: the per-modality sums are reduced over them
            stats = self.accelerator.reduce(self._train_stats.to(self.args.device), reduction="sum").cpu()
            for index, name in enumerate(self.target_modalities):
                total, _, count = stats[index].tolist()
                if count:
                    logs[f"loss_{name}"] = round(total / count, 4)
            self._train_stats.zero_()
        super().log(logs, *args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            outputs = model(**inputs)
        stats = target_statistics(outputs, inputs["labels"], self.target_modalities).to(outputs.loss.device)
        return outputs.loss.detach(), stats, torch.zeros(stats.shape[0], device=stats.device)

    def _metrics(self, eval_pred: Any) -> dict[str, float]:
        stats = np.asarray(eval_pred.predictions).reshape(-1, len(self.target_modalities), 3).sum(0)
        metrics = {}
        for (total, correct, count), name in zip(stats, self.target_modalities, strict=True):
            if count:
                metrics[f"loss_{name}"] = float(total / count)
                metrics[f"token_accuracy_{name}"] = float(correct / count)
        if stats[:, 2].sum():
            metrics["token_accuracy"] = float(stats[:, 1].sum() / stats[:, 2].sum())
        return metrics


# ----------------------------------------------------------------------------- the command
@dataclass
class PretrainingArguments:
    """`terramind pretrain` options (the TrainingArguments ones come with them)."""

    data_root: str = field(metadata={"help": "folder with one subfolder per modality (TerraMesh layout)"})
    input_modalities: list[str] = field(metadata={"help": "modalities given as inputs, e.g. S2L2A S1RTC DEM "
                                                          "(raw patches; LULC/NDVI as tokens)"})  # fmt: skip
    target_modalities: list[str] = field(metadata={"help": "modalities whose tokens are predicted, e.g. S1RTC LULC"})
    model_name_or_path: str = field(metadata={"help": "the generator to continue from (folder or Hub id)"})
    tokenizer: list[str] = field(default_factory=list, metadata={
        "help": "MODALITY=PATH of a tokenizer folder (default: config.tokenizer_paths / the official repos)"})
    input_budget: int = field(default=DEFAULT_INPUT_BUDGET, metadata={"help": "input tokens per sample (4M: 128)"})
    target_budget: int = field(default=DEFAULT_TARGET_BUDGET, metadata={"help": "target tokens per sample (4M: 128)"})
    dirichlet_alpha: float = field(default=DEFAULT_DIRICHLET_ALPHA, metadata={
        "help": "symmetric Dirichlet concentration spreading each budget over the modalities (4M: 0.2)"})
    eval_fraction: float = field(default=0.0, metadata={"help": "share of data_root's samples held out for evaluation"})
    eval_data_root: str | None = field(default=None, metadata={
        "help": "a second evaluation set (e.g. the original pre-training data), logged as eval_original_*"})
    crop_size: int | None = field(default=None, metadata={"help": "center crop of every raster (pixels)"})
    image_grep: str = field(default="*.tif", metadata={"help": "file pattern in every modality folder"})
    cache_dir: str | None = field(default=None, metadata={"help": "folder of the cached token shards"})
    num_proc: int | None = field(default=None, metadata={"help": "processes tokenizing the targets once"})


def split_samples(ids: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training, held-out) ids: a seeded random `fraction` held out (at least one, never all)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {fraction}.")
    if not fraction:
        return list(ids), []
    count = min(max(1, round(fraction * len(ids))), len(ids) - 1)
    if count < 1:
        raise ValueError(f"eval_fraction needs at least 2 samples, {len(ids)} found.")
    order = np.random.default_rng(seed).permutation(len(ids))
    held = {ids[i] for i in order[:count]}
    return [i for i in ids if i not in held], [i for i in ids if i in held]


def load_generator(args: PretrainingArguments) -> Any:
    """The generator, with the tokenizers given as MODALITY=PATH recorded in its config (so the saved folder finds
    them) and set."""
    from ..modeling_terramind import TerraMindForGeneration

    paths = {}
    for item in args.tokenizer:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--tokenizer takes MODALITY=PATH, got {item!r}.")
        paths[resolve_output_modality(name)] = path
    if not paths:
        return TerraMindForGeneration.from_pretrained(args.model_name_or_path)
    from ..configuration_terramind import TerraMindConfig

    saved = TerraMindConfig.from_pretrained(args.model_name_or_path).tokenizer_paths or {}
    return TerraMindForGeneration.from_pretrained(args.model_name_or_path, tokenizer_paths={**saved, **paths})


def pretrain(args: PretrainingArguments, training_args: TrainingArguments, model: Any = None) -> PretrainingTrainer:
    """Continued pre-training with `Trainer`; saves a `TerraMindForGeneration` folder to `output_dir`."""
    for name in args.input_modalities:
        resolve_modality(name)
    for name in args.target_modalities:
        key = token_modality(resolve_output_modality(name))
        if MODALITIES[key].kind != "image_tokens":
            raise ValueError(f"Target {name}: this objective predicts image token grids; Coordinates targets are "
                             f"not supported yet.")  # fmt: skip
    masking = AnyToAnyMasking(args.input_budget, args.target_budget, args.dirichlet_alpha)
    model = model if model is not None else load_generator(args)
    sequence_tokens = {name: int(model.terramind.get_tokenizer(name).encode_coordinates([[0.0, 0.0]]).shape[1])
                       for name in args.input_modalities if is_coordinates(name)}  # fmt: skip
    missing = [m for m in args.input_modalities if m not in model.terramind.modality_channels
               and resolve_modality(m) not in model.terramind.modality_channels]  # fmt: skip
    if missing:
        raise ValueError(f"The model has no input embedding for {', '.join(missing)}.")
    names = [m for m in dict.fromkeys([*args.input_modalities, *args.target_modalities]) if not is_coordinates(m)]
    folders = [m for m in args.input_modalities if not is_coordinates(m)] or names
    ids = list(list_samples(args.data_root, names, folders, args.target_modalities, args.image_grep))
    train_ids, held_ids = split_samples(ids, args.eval_fraction, training_args.seed)
    common = dict(input_modalities=args.input_modalities, target_modalities=args.target_modalities, model=model,
                  image_grep=args.image_grep, cache_dir=args.cache_dir, num_proc=args.num_proc,
                  crop_size=args.crop_size)  # fmt: skip
    with training_args.main_process_first(desc="tokenizing"):  # one process tokenizes, the others read the cache
        train = build_pretraining_dataset(args.data_root, sample_ids=train_ids, **common)
        evaluation: dict[str, Any] = {}
        if held_ids:
            evaluation["new"] = build_pretraining_dataset(args.data_root, sample_ids=held_ids, fixed_masks=True,
                                                          **common)  # fmt: skip
        if args.eval_data_root:
            evaluation["original"] = build_pretraining_dataset(args.eval_data_root, fixed_masks=True, **common)
    eval_dataset = evaluation if len(evaluation) > 1 else next(iter(evaluation.values()), None)
    if eval_dataset is None and training_args.eval_strategy != "no":
        raise ValueError("Evaluation needs --eval_fraction or --eval_data_root.")
    training_args.remove_unused_columns = False  # rows hold paths and token grids, not forward arguments
    if training_args.ddp_find_unused_parameters is None:  # a batch may leave a modality's embedding unused
        training_args.ddp_find_unused_parameters = True
    if training_args.gradient_checkpointing and training_args.gradient_checkpointing_kwargs is None:
        training_args.gradient_checkpointing_kwargs = {"use_reentrant": False}  # reentrant breaks with the above
    training_args.label_names = ["labels"]
    trainer = PretrainingTrainer(
        model=model, args=training_args, train_dataset=train, eval_dataset=eval_dataset,
        data_collator=AnyToAnyCollator(masking, args.input_modalities, args.target_modalities,
                                       model.config.patch_size, sequence_tokens),
        target_modalities=args.target_modalities,
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if eval_dataset is not None:
        trainer.evaluate()
    if training_args.output_dir:
        trainer.save_model()
        trainer.save_state()  # trainer_state.json: the logged losses and evaluations
        if trainer.is_world_process_zero():
            Path(training_args.output_dir, "pretraining_args.json").write_text(json.dumps(vars(args), indent=2))
    return trainer


def main(argv: Sequence[str] | None = None) -> PretrainingTrainer:
    """`terramind pretrain`: parse PretrainingArguments and TrainingArguments (or a JSON file of them), pre-train."""
    import sys

    from transformers import HfArgumentParser

    parser = HfArgumentParser((PretrainingArguments, TrainingArguments), prog="terramind pretrain",
                              description="Continued pre-training of a TerraMind generator (4M's objective).")
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        args, training_args = parser.parse_json_file(argv[0])
    else:
        args, training_args = parser.parse_args_into_dataclasses(args=argv)
    trainer = pretrain(args, training_args)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if trainer.is_world_process_zero() and losses and not math.isnan(losses[-1]):
        logger.warning(f"training loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    return trainer


__all__ = ["AnyToAnyCollator", "AnyToAnyMasking", "PretrainingArguments", "PretrainingTrainer", "main", "pretrain",
           "spread_budget", "split_samples", "target_statistics"]  # fmt: skip
