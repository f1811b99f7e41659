"""Reading a local weights file and loading a state dict into a backbone, classifier aside.

A pretrained file's classifier belongs to another task: it is dropped unless it fits the
model's classifier exactly and the caller asks to keep it, so a K-class head in a file is
never a shape error (the pain point of transformers issue #15876).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from transferkit.errors import BackboneError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
# training checkpoints (timm, Lightning, torchvision references) wrap the state dict
_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema")
# DDP and torch.compile prefix every key
_KEY_PREFIXES = ("module.", "_orig_mod.")


def read_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` or ``.pth``/``.pt``/``.bin`` file.

    Pickled files are read with ``torch.load(weights_only=True)``: a file that needs
    arbitrary code to unpickle is refused, never executed.

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    dict of str to Tensor
        The tensors on the CPU, unwrapped from a training checkpoint's ``"state_dict"`` or
        ``"model"`` entry and without ``module.`` prefixes.

    Raises
    ------
    BackboneError
        The file is missing, has another suffix, or cannot be read; the message names it.
    """
    path = Path(path)
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise BackboneError(
            f"weights file: expected a file ending in {', '.join(WEIGHT_SUFFIXES)}. Received: weights_path='{path}'"
        )
    if not path.is_file():
        raise BackboneError(f"weights file: expected an existing file. Received: weights_path='{path}' (not found)")
    try:
        if path.suffix.lower() == ".safetensors":
            content = safetensors.torch.load_file(path, device="cpu")
        else:
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated or unsafe pickle: name the file, keep the cause
        raise BackboneError(f"could not read the weights file '{path}': {type(exc).__name__}: {exc}") from exc
    return _unwrap_state_dict(content, path)


def _unwrap_state_dict(content: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(content, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(content.get(key), Mapping):
                content = content[key]
                break
    is_state_dict = isinstance(content, Mapping) and all(isinstance(v, torch.Tensor) for v in content.values())
    if not is_state_dict or not content:
        raise BackboneError(
            f"the weights file '{path}' holds no state dict: expected a mapping of parameter names to "
            f"tensors. Received: {type(content).__name__}"
        )
    state = {}
    for key, tensor in content.items():
        for prefix in _KEY_PREFIXES:
            key = key.removeprefix(prefix)
        state[key] = tensor
    return state


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Key prefixes of the model's classifier(s), e.g. ``("classifier.",)``.

    Taken from timm's pretrained config (which names the classifier even when it is an
    ``Identity``) and from ``model.get_classifier()``.
    """
    names = model.pretrained_cfg.get("classifier") or ()
    names = {names} if isinstance(names, str) else set(names)
    heads = model.get_classifier()
    heads = heads if isinstance(heads, tuple) else (heads,)
    names.update(name for name, module in model.named_modules() if any(module is head for head in heads) and name)
    return tuple(sorted(f"{name}." for name in names))


def load_backbone_weights(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str, keep_classifier: bool
) -> None:
    """Copy ``state`` into ``model``, checking that every backbone tensor is there and fits.

    Parameters
    ----------
    model : torch.nn.Module
        A timm model.
    state : mapping of str to Tensor
        Weights in the model's key layout.
    source : str
        Where the weights came from (a file, a package), for error messages.
    keep_classifier : bool
        Load the classifier from ``state`` too, if it has exactly the model's shapes;
        otherwise the model's own (new) classifier stays.

    Raises
    ------
    BackboneError
        A backbone tensor is missing, unexpected, or has another shape; the first is named.
    """
    target = model.state_dict()
    prefixes = classifier_prefixes(model)
    body = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    head = {k: v for k, v in state.items() if k.startswith(prefixes)}
    target_head = {k: v for k, v in target.items() if k.startswith(prefixes)}
    head_fits = head.keys() == target_head.keys() and all(v.shape == target_head[k].shape for k, v in head.items())
    if keep_classifier and head and head_fits:
        body.update(head)

    architecture = model.pretrained_cfg.get("architecture") or type(model).__name__
    unexpected = [k for k in body if k not in target]
    if unexpected:
        raise BackboneError(
            f"the weights in {source} do not fit {architecture}: unexpected keys {unexpected[:3]} "
            f"({len(unexpected)} in all). Is the file for another architecture?"
        )
    for key, tensor in body.items():
        if tensor.shape != target[key].shape:
            raise BackboneError(
                f"the weights in {source} do not fit {architecture}: {key} expected shape "
                f"{tuple(target[key].shape)}. Received: {tuple(tensor.shape)}. Is the file for another architecture?"
            )
    # BatchNorm's step counter is not a weight; files from other tools often lack it
    missing = [
        k for k in target if k not in body and not k.startswith(prefixes) and not k.endswith("num_batches_tracked")
    ]
    if missing:
        raise BackboneError(
            f"the weights in {source} do not fit {architecture}: missing keys {missing[:3]} "
            f"({len(missing)} in all). Is the file for another architecture?"
        )
    model.load_state_dict(body, strict=False)
