"""Reading checkpoint files safely, recognising their layout, and checking them against the architecture.

``.safetensors`` files (by suffix or content) are read with safetensors, anything
else with ``torch.load(weights_only=True)`` -- never a full unpickle, so a hostile
file cannot run code. Every failure is a :class:`CheckpointError` whose message
says what is wrong with the file in one line.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open

from ..convert import StateDictMismatch, check_shapes
from ..model import Xception, XceptionConfig
from .errors import CheckpointError
from .store import CONFIG_KEY

__all__ = ["read_checkpoint", "read_checkpoint_and_config", "detect_format", "infer_config", "verified_state"]

# --------------------------------------------------------------------------- reading

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.")


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors files start with a little-endian u64 header length, then '{'."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30)


def _torch_load_problem(exc: BaseException, path: Path) -> str:
    """One line saying why ``torch.load(weights_only=True)`` refused a file."""
    text = str(exc)
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        head = b""
    if not head:
        return "the file is empty"
    if head == b"PK\x03\x04" and not re.search(r"Unsupported global|[Uu]nsupported class", text):
        return "it is a PyTorch zip archive that is truncated or corrupted (download or copy it again)"
    if "Unsupported operand" in text or "invalid load key" in text or isinstance(exc, UnicodeDecodeError):
        return "it is not a PyTorch checkpoint (unrecognised bytes)"
    if isinstance(exc, EOFError) or "unexpected EOF" in text or "Ran out of input" in text:
        return "the file ends too early (truncated download or copy?)"
    if "Weights only load failed" in text or "Unsupported global" in text or "nsupported class" in text:
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(r"[Uu]nsupported class ([\w.]+)", text)
        what = f" (found {m.group(1)})" if m else ""
        return (
            f"it contains Python objects other than tensors{what}, which are not loaded "
            f"for safety (torch.load weights_only=True); save only the model's state_dict"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"it could not be parsed as a PyTorch checkpoint ({type(exc).__name__}: {first[:200]})"


def _read_raw(path: Path) -> tuple[Any, dict[str, str]]:
    """Load the file's content (safetensors or torch) and safetensors metadata."""
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                meta = dict(fh.metadata() or {})
                return {k: fh.get_tensor(k) for k in fh.keys()}, meta
        except Exception as exc:  # noqa: BLE001 - SafetensorError and friends
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
            ) from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except MemoryError:
        raise CheckpointError(f"{path}: not enough memory to load this checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, OSError...
        raise CheckpointError(f"{path}: cannot load checkpoint: {_torch_load_problem(exc, path)}") from None
    return obj, {}


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Find the state dict in a loaded object; also return an embedded config dict, if any."""
    config: dict[str, Any] | None = None
    for _ in range(2):  # e.g. {"model": {"state_dict": ...}} at most
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        if isinstance(obj.get("config"), Mapping):
            config = dict(obj["config"])
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: expected a state dict (a mapping of names to tensors), found {type(obj).__name__}"
        )
    if not obj:
        raise CheckpointError(f"{path}: the checkpoint holds no tensors")
    bad = [(k, v) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        k, v = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise CheckpointError(
            f"{path}: expected a state dict of tensors, but entry {k!r} is a {type(v).__name__}{more}"
        )
    state = dict(obj)
    for prefix in _PREFIXES:  # DataParallel / torch.compile wrappers
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state, config


def read_checkpoint_and_config(
    path: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """:func:`read_checkpoint`, plus the configuration the file carries, if any.

    The configuration comes from a ``"config"`` entry beside a wrapped state dict,
    or from the safetensors metadata this package writes.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: file not found")
    if not p.is_file():
        raise CheckpointError(f"{p}: not a regular file")
    obj, meta = _read_raw(p)
    state, config = _unwrap(obj, p)
    if config is None and CONFIG_KEY in meta:
        try:
            config = json.loads(meta[CONFIG_KEY])
        except json.JSONDecodeError:
            config = None
    return state, config


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict on the CPU.

    ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers are unwrapped and a
    ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile) prefix common to
    all keys is stripped. Raises :class:`CheckpointError`.
    """
    return read_checkpoint_and_config(path)[0]


# --------------------------------------------------------------------------- layouts and configs


def detect_format(state: Mapping[str, torch.Tensor]) -> Literal["timm", "ours"]:
    """"timm" (``block1.rep.0.conv1.weight``) or "ours" (``entry.block2.sep1.depthwise.weight``)."""
    if "entry.block1.conv1.weight" in state or any(k.startswith("entry.block2.sep1.") for k in state):
        return "ours"
    if "conv1.weight" in state and any(k.startswith("block1.rep.") for k in state):
        return "timm"
    sample = ", ".join(list(state)[:4])
    raise StateDictMismatch(
        "not an Xception checkpoint: expected timm/Cadene legacy_xception keys (conv1.weight, "
        f"block1.rep.0.conv1.weight, ...) or xception_core keys (entry.block2.sep1.depthwise.weight, ...); "
        f"found {sample}{', ...' if len(state) > 4 else ''}"
    )


def _shape(state: Mapping[str, torch.Tensor], key: str, dim: int = 0) -> int:
    t = state[key]
    if t.dim() <= dim:
        raise StateDictMismatch(f"{key} has shape {tuple(t.shape)}, expected at least {dim + 1} dimensions")
    return int(t.shape[dim])


_SEP_PART = re.compile(r"(.+\.sep\d+)\.(conv|depthwise|grouped|pointwise)\.weight")


def _sep_out(state: Mapping[str, torch.Tensor], layer: str) -> int:
    """A separable layer's output channels: its 1x1 part's, or its regular convolution's."""
    key = f"{layer}.pointwise.weight" if f"{layer}.pointwise.weight" in state else f"{layer}.conv.weight"
    return _shape(state, key)


def infer_spectrum(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``segments`` and ``order`` of the spectrum point a state dict in our layout was trained at.

    Read off the part names and shapes: ``conv`` is k = 1; the 3x3 part's groups give k
    (``"C"`` when every one is ``depthwise``); it has C_in channels when it comes first and
    C_out after the 1x1. ``order`` is left out when no layer tells (C_in = C_out everywhere).
    """
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if m := _SEP_PART.fullmatch(key):
            layers.setdefault(m.group(1), {})[m.group(2)] = value
    if any("conv" in parts for parts in layers.values()):
        return {"segments": 1}
    groups, orders = set(), set()
    for name, parts in layers.items():
        spatial = parts.get("depthwise", parts.get("grouped"))
        pointwise = parts.get("pointwise")
        if spatial is None or pointwise is None or spatial.dim() != 4 or pointwise.dim() != 4:
            raise StateDictMismatch(f"{name}: expected a 3x3 part (depthwise or grouped) and a pointwise part")
        c, per_group = int(spatial.shape[0]), int(spatial.shape[1])
        if "grouped" in parts:
            groups.add(c // max(per_group, 1))
        c_out, c_in = int(pointwise.shape[0]), int(pointwise.shape[1])
        if c_in != c_out:
            orders.add("depthwise-first" if c == c_in else "pointwise-first")
    if len(groups) > 1 or len(orders) > 1:
        raise StateDictMismatch(f"separable layers disagree on the spectrum point (groups {sorted(groups)}, orders {sorted(orders)})")
    found: dict[str, Any] = {"segments": groups.pop() if groups else "C"}
    if orders:
        found["order"] = orders.pop()
    return found


def infer_config(state: Mapping[str, torch.Tensor], **overrides: Any) -> XceptionConfig:
    """Read widths, middle repeats, classes, residual on/off and the spectrum point off our key layout.

    The intermediate activation (none / relu / elu) has no parameters and cannot
    be read from weights: it comes from ``overrides`` (or an embedded config), else
    "none"; so does the order where no layer's shapes tell it. Raises
    :class:`StateDictMismatch` when the layout is not ours.
    """
    try:
        middle = sorted(
            {int(m.group(1)) for k in state if (m := re.match(r"middle\.block(\d+)\.", k))}
        )
        repeats = len(middle)
        if middle and middle != list(range(5, 5 + repeats)):
            raise StateDictMismatch(f"middle-flow blocks are not numbered 5..{4 + repeats}: {middle}")
        n = 5 + repeats  # exit block 13 in the paper numbering
        cfg = dict(
            num_classes=_shape(state, "fc.weight"),
            in_chans=_shape(state, "entry.block1.conv1.weight", 1),
            stem_channels=(_shape(state, "entry.block1.conv1.weight"), _shape(state, "entry.block1.conv2.weight")),
            entry_channels=tuple(_sep_out(state, f"entry.block{b}.sep2") for b in (2, 3, 4)),
            middle_repeats=repeats,
            exit_channels=(
                _sep_out(state, f"exit.block{n}.sep2"),
                _sep_out(state, f"exit.block{n + 1}.sep1"),
                _sep_out(state, f"exit.block{n + 1}.sep2"),
            ),
            residual="entry.block2.skip.weight" in state,
            **infer_spectrum(state),
        )
    except KeyError as exc:
        raise StateDictMismatch(
            f"not an xception_core state dict (could not find {exc}); expected keys like "
            "entry.block1.conv1.weight, entry.block2.sep1.depthwise.weight, fc.weight"
        ) from None
    cfg.update(overrides)
    try:
        return XceptionConfig(**cfg)
    except (TypeError, ValueError) as exc:
        raise StateDictMismatch(f"inferred configuration is invalid: {exc}") from None


def verified_state(
    state: Mapping[str, torch.Tensor], config: XceptionConfig, where: str
) -> dict[str, torch.Tensor]:
    """Load ``state`` strictly into a fresh model; return that model's (canonical) state dict."""
    try:
        model = Xception(config)
    except (ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{where}: cannot build the architecture: {exc}") from None
    reference = model.state_dict()
    # Checkpoints from old PyTorch lack BatchNorm's step counter (unused in eval).
    state = dict(state)
    for k, v in reference.items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros_like(v)
    try:
        check_shapes(state, reference)
    except StateDictMismatch as exc:
        raise CheckpointError(f"{where}: does not fit the Xception architecture: {exc}") from None
    for k, v in state.items():
        # a float64 sum of finite float32 values cannot overflow: inf/NaN iff one is there
        if v.is_floating_point() and not bool(v.sum(dtype=torch.float64).isfinite()):
            raise CheckpointError(f"{where}: tensor {k} contains NaN or infinite values")
        if v.is_complex():
            raise CheckpointError(f"{where}: tensor {k} is complex ({v.dtype})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{where}: weights do not load into the architecture: {' '.join(first)[:300]}") from None
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
