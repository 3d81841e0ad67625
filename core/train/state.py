"""Saving and restoring a training run: RNG states of every rank, the finite-weights gate before a
save, the resume config check and state loading, and weight transfer from another checkpoint
(``train.init_weights``)."""
from __future__ import annotations

import io

import torch
from loguru import logger
from torch import nn

from configs.base_config import ConfigError
from utils.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_matching,
    non_finite_tensors,
    preferred_weights,
    rng_state,
    set_rng_state,
    sibling_checkpoints,
)
from utils.dist import DistInfo, all_gather_object


class NonFiniteWeightsError(FloatingPointError):
    """The weights hold NaN/Inf; nothing is saved over the last finite checkpoints."""


def check_finite_weights(model: nn.Module, ema: nn.Module | None, step: int) -> None:
    """Raise NonFiniteWeightsError when the model or its EMA holds NaN/Inf (before any save)."""
    bad = non_finite_tensors(model.state_dict(), "model.")
    if ema is not None:
        bad += non_finite_tensors(ema.state_dict(), "ema.")
    if bad:
        raise NonFiniteWeightsError(f"the weights became non-finite by step {step} ({len(bad)} tensors, e.g. "
                                    f"{bad[:3]}); nothing saved, so last.pth and best.pth keep the last finite weights")


def gather_rng_states(dist: DistInfo) -> list[dict]:
    """The RNG state of every rank, indexed by rank (a collective under DDP). Tensors travel as
    torch.save bytes: all_gather_object cannot rebuild them."""
    if dist.world_size == 1:
        return [rng_state()]
    buf = io.BytesIO()
    torch.save(rng_state(), buf)
    return [torch.load(io.BytesIO(b), weights_only=True) for b in all_gather_object(buf.getvalue())]


def rank_rng(rngs, dist: DistInfo) -> dict | None:
    """This rank's RNG state from a checkpoint's list of per-rank states (older files: one dict)."""
    if isinstance(rngs, dict):
        rngs = [rngs]
    if not rngs:
        return None
    if len(rngs) != dist.world_size:
        logger.warning(f"the checkpoint holds the RNG states of {len(rngs)} ranks, this run has "
                       f"{dist.world_size}; ranks without one continue from their seed")
    return rngs[dist.rank] if dist.rank < len(rngs) else None


def epoch_batches(loader, sampler, epoch: int, start: int, rng: dict | None):
    """The train loader's iterator for ``epoch``, from batch ``start`` (the batches a resumed epoch
    already trained are skipped by the sampler's set_start, without loading them).

    ``rng`` (the state saved with the position, or None) is restored where the uninterrupted run
    had it: before the iterator at an epoch boundary, after it mid-epoch.
    """
    sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)
    if start == 0 and rng is not None:
        set_rng_state(rng)
    if start:
        sampler.set_start(start * loader.batch_size)
    batches = iter(loader)
    if start and rng is not None:
        set_rng_state(rng)
    return batches


def load_for_resume(path: str) -> dict:
    """The checkpoint to resume; an unreadable one names the other checkpoints of its run."""
    try:
        return load_checkpoint(path, required=("model", "optimizer", "scheduler", "epoch", "config"))
    except CheckpointError as e:
        others = sibling_checkpoints(path)
        offer = f"; other checkpoints of this run: {', '.join(others)} (pass one with --ckpt)" if others else ""
        raise CheckpointError(f"{e}{offer}") from None


def load_states(path: str, ckpt: dict, model: nn.Module, ema, optimizer) -> None:
    """The weights, EMA (when both sides have one) and optimizer state of a resumed checkpoint."""
    try:
        model.load_state_dict(ckpt["model"])
        if ema is not None and ckpt.get("ema"):
            ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: its state does not fit this run's model or optimizer "
                              f"({str(e).splitlines()[0]})") from None


def config_diff(old: dict, new: dict) -> dict[str, tuple]:
    """``{"section.key": (old value, new value)}`` for the keys both configs have and that differ."""
    return {f"{sec}.{k}": (v, new[sec][k]) for sec, values in old.items()
            if isinstance(values, dict) and isinstance(new.get(sec), dict)
            for k, v in values.items() if k in new[sec] and new[sec][k] != v}


def check_resume_config(path: str, saved: dict, now: dict) -> None:
    """A resume continues the same experiment: the model and class list must be the checkpoint's.
    Other changes (e.g. more epochs, to extend the run) are allowed and listed."""
    diff = config_diff(saved, now)
    fatal = {k: v for k, v in diff.items()
             if k == "data.class_names" or (k.startswith("model.") and k != "model.pretrained")}
    if fatal:
        listing = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in fatal.items())
        raise CheckpointError(f"{path}: cannot resume with another model or class list ({listing}); to "
                              f"fine-tune from it, start a new run with train.init_weights='{path}'")
    if diff:
        logger.warning("resuming with config changes (checkpoint -> now): "
                       + "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items()))


def transfer_weights(model: nn.Module, path: str, model_name: str) -> None:
    """``train.init_weights``: the (EMA) weights of a checkpoint of this repo, of any model family,
    copied where name and shape fit; the others (e.g. the class layers of another class count) are
    listed in one warning by load_matching."""
    try:
        ckpt = load_checkpoint(path, required=("model",))
    except CheckpointError as e:
        raise ConfigError(f"train.init_weights: {e}") from None
    loaded, skipped = load_matching(model, preferred_weights(ckpt))
    if not loaded:
        raise ConfigError(f"train.init_weights={path!r}: no tensor of it fits model.name={model_name!r}")
    logger.info(f"train.init_weights {path}: {len(loaded)} tensors loaded, {len(skipped)} skipped")
