"""ONNX export of a model of the registry, for ONNX-based servers (Triton, onnxruntime, ...).

The exported graph is the classifier alone: input ``input`` (float32
``[batch, 3, S, S]``, already preprocessed: resized, centre-cropped, scaled with
the card's mean / std), output ``logits`` (float32 ``[batch, num_classes]``).
The batch dimension is dynamic; the spatial size is the card's ``input_size``.
Everything a server needs to feed the graph travels in the file's metadata
(``metadata_props``): the model id, the class names, the preprocessing, the
architecture configuration and the sha256 of the source weights.

The attribution and introspection features stay with PyTorch (they need the
separable convolutions' intermediate outputs and autograd).

Needs the ``onnx`` package (``pip install 'xception-explorer[deploy]'``);
verification needs ``onnxruntime`` as well.
"""

from __future__ import annotations

import io
import json
import os
import threading
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .model import Xception, model_device
from .weights import ModelCard, default_model_id, load_model

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
#: Supported by every onnxruntime of the last years and by TensorRT / Triton.
DEFAULT_OPSET = 17
#: Largest |onnxruntime - PyTorch| accepted on the logits by :func:`export_onnx`'s check.
DEFAULT_ATOL = 1e-4
#: Batch sizes the check runs (1 and a batch > 1 prove the dynamic batch dimension).
CHECK_BATCHES = (1, 3)
INSTALL_HINT = "pip install 'xception-explorer[deploy]' (or: pip install onnx onnxruntime)"


class ExportError(Exception):
    """A failed export or a failed check, as one line."""


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote and how well it matched PyTorch."""

    model_id: str
    path: Path
    input_size: int
    num_classes: int
    opset: int
    #: Largest |onnxruntime - PyTorch| over the check batches; None when not checked.
    max_abs_diff: float | None
    checked_batches: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_id,
            "path": str(self.path),
            "input": {"name": INPUT_NAME, "shape": [BATCH_DIM, 3, self.input_size, self.input_size]},
            "output": {"name": OUTPUT_NAME, "shape": [BATCH_DIM, self.num_classes]},
            "opset": self.opset,
            "max_abs_diff": self.max_abs_diff,
            "checked_batches": list(self.checked_batches),
        }


def _require_onnx():
    try:
        import onnx
    except ImportError:
        raise ExportError(f"ONNX export needs the onnx package: {INSTALL_HINT}") from None
    return onnx


def _require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(f"checking the export needs onnxruntime: {INSTALL_HINT}") from None
    return onnxruntime


def card_metadata(card: ModelCard) -> dict[str, str]:
    """The ``metadata_props`` written into the file (all values are strings, JSON where structured)."""
    return {
        "xception.model_id": card.id,
        "xception.description": card.description,
        "xception.class_names": json.dumps(list(card.class_names), ensure_ascii=False),
        "xception.preprocess": json.dumps(card.preprocess.to_dict()),
        "xception.config": json.dumps(card.config.to_dict()),
        "xception.weights_sha256": card.sha256 or "",
        "xception.input_layout": "NCHW float32, RGB, resized + centre-cropped, (x / 255 - mean) / std",
    }


#: torch.onnx.export keeps process-wide state (``GLOBALS.in_onnx_export``): two exports at once,
#: e.g. two models loading in the API, make each other fail. One export at a time.
_EXPORT_LOCK = threading.Lock()


def onnx_bytes(model: nn.Module, *, input_size: int, opset: int = DEFAULT_OPSET) -> bytes:
    """``model`` (eval mode, float32) as an ONNX graph in memory, with a dynamic batch dimension.

    No file is written; :func:`write_onnx` adds metadata and the checker on top, and
    :mod:`xception_core.engine` hands the bytes straight to onnxruntime. Leaves ``model`` in eval mode.
    """
    model.eval()
    param = next(model.parameters())
    in_chans = model.config.in_chans if hasattr(model, "config") else param.shape[1]
    # batch 2 while tracing: nothing may specialise on a batch of 1
    example = torch.zeros(2, in_chans, input_size, input_size, dtype=torch.float32, device=param.device)
    buffer = io.BytesIO()
    with _EXPORT_LOCK, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model.float(),
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    return buffer.getvalue()


def write_onnx(
    model: Xception,
    path: str | os.PathLike[str],
    *,
    input_size: int,
    opset: int = DEFAULT_OPSET,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Export ``model`` (float32, CPU, eval mode) to ``path`` with a dynamic batch dimension.

    The file is written to a temporary name beside ``path``, checked with
    ``onnx.checker`` and moved into place, so a failure never leaves a partial file.
    """
    onnx = _require_onnx()
    out = Path(path)
    if out.is_dir():
        raise ExportError(f"{out} is a directory; give a file name, e.g. {out / 'model.onnx'}")
    if not out.parent.is_dir():
        raise ExportError(f"{out.parent}: no such directory")
    was_training = model.training
    # a hidden name beside the target (same file system, so os.replace is atomic), created
    # by the writers themselves with the usual permissions
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
    try:
        proto = onnx.load_from_string(onnx_bytes(model, input_size=input_size, opset=opset))
        if metadata:
            onnx.helper.set_model_props(proto, dict(metadata))
        proto.doc_string = "Xception (Chollet, CVPR 2017) classifier exported by xception-explorer"
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        os.replace(tmp, out)
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - one line for the CLI
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
        model.train(was_training)
    return out


def onnx_session(source: str | os.PathLike[str] | bytes, *, threads: int | None = None):
    """An onnxruntime CPU session on a file or on the bytes of a graph (:func:`onnx_bytes`);
    ``threads``: its intra-op threads (default: onnxruntime's choice)."""
    ort = _require_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(source if isinstance(source, bytes) else str(source), options, providers=["CPUExecutionProvider"])


def onnx_logits(session_or_path: Any, batch: np.ndarray | torch.Tensor) -> np.ndarray:
    """Logits of the exported model for a preprocessed batch ``[N, 3, S, S]``."""
    session = onnx_session(session_or_path) if isinstance(session_or_path, (str, os.PathLike)) else session_or_path
    x = batch.detach().cpu().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
    # C order (a channels_last tensor's array is not) and float32, copying only if needed
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]


def compare_with_torch(
    model: Xception,
    path: str | os.PathLike[str],
    *,
    input_size: int,
    batches: Sequence[int] = CHECK_BATCHES,
    seed: int = 0,
) -> float:
    """Largest |onnxruntime - PyTorch| on the logits of random inputs in [-1, 1], over ``batches``."""
    session = onnx_session(path)
    generator = torch.Generator().manual_seed(seed)
    model = model.eval()
    device = model_device(model)
    worst = 0.0
    for n in batches:
        x = torch.rand(n, model.config.in_chans, input_size, input_size, generator=generator) * 2 - 1
        with torch.no_grad():
            expected = model(x.to(device)).float().cpu().numpy()
        got = onnx_logits(session, x)
        if got.shape != expected.shape:
            raise ExportError(f"onnxruntime returned logits of shape {got.shape} for a batch of {n}; expected {expected.shape}")
        worst = max(worst, float(np.max(np.abs(got - expected))))
    return worst


def export_onnx(
    model_id: str | None,
    out: str | os.PathLike[str],
    *,
    home: str | os.PathLike[str] | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    atol: float = DEFAULT_ATOL,
) -> OnnxExport:
    """Export model ``model_id`` of the registry (default: the default model) to ``out``.

    With ``check`` (the default) onnxruntime runs the file on batches of 1 and 3
    and its logits must lie within ``atol`` of PyTorch's, else :class:`ExportError`
    (the file is kept, so it can be inspected).
    """
    _require_onnx()
    if check:
        _require_onnxruntime()
    model_id = model_id or default_model_id(home)
    model, card = load_model(model_id, device="cpu", home=home)
    size = card.preprocess.input_size
    path = write_onnx(model, out, input_size=size, opset=opset, metadata=card_metadata(card))
    diff = None
    batches: tuple[int, ...] = ()
    if check:
        batches = tuple(CHECK_BATCHES)
        diff = compare_with_torch(model, path, input_size=size, batches=batches)
        if not diff <= atol:
            raise ExportError(
                f"wrote {path}, but onnxruntime's logits differ from PyTorch's by up to {diff:.3g} "
                f"(tolerance {atol:g}); try another --opset"
            )
    return OnnxExport(card.id, path, size, card.num_classes, opset, diff, batches)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``xception.*`` metadata of an exported file, JSON values decoded."""
    onnx = _require_onnx()
    proto = onnx.load(str(path), load_external_data=False)
    out: dict[str, Any] = {}
    for prop in proto.metadata_props:
        if not prop.key.startswith("xception."):
            continue
        key = prop.key.removeprefix("xception.")
        try:
            out[key] = json.loads(prop.value) if key in ("class_names", "preprocess", "config") else prop.value
        except json.JSONDecodeError:
            out[key] = prop.value
    return out
