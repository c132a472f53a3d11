"""How a pointwise channel is built from depthwise channels: ``POST /v1/decomposition``.

Pointwise output channel ``c`` of a separable layer is ``sum_i W[c, i] * depthwise_i`` (the
paper's configuration: nothing in between); :func:`xception_core.introspect.decompose` splits
it into its strongest terms and the rest, from the layer's cached capture, and the answer
shows that they add up to the pointwise output (``max_abs_error``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from xception_core import render
from xception_core.introspect import check_decomposable, decompose

from ..encodings import BinaryResult, b64png, npz_bytes, tile_png
from ..errors import out_of_range
from ..registry import LoadedModel
from ..runtime import Runtime, Upload, check_layer
from ..workers import Deadline


@dataclass(frozen=True)
class DecompositionRequest:
    """Pointwise ``channel`` of ``layer``: its ``top`` contributions, answered as ``fmt``
    (json / png / npz) with ``colormap`` tiles ``tile_px`` wide."""

    model: str | None
    upload: Upload
    layer: str
    channel: int
    top: int
    fmt: str
    colormap: str
    tile_px: int


class Decompositions:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def decompose(self, request: DecompositionRequest, deadline: Deadline) -> dict[str, Any] | BinaryResult:
        rt = self.runtime
        entry = await rt.model(request.model, deadline)
        check_layer(entry, request.layer)
        check_decomposable(entry.separable[request.layer])  # ViewNotApplicableError: a 422 that says why
        c_out = entry.layer_shape(request.layer, "pointwise")[0]
        if not 0 <= request.channel < c_out:
            raise out_of_range("channel", request.channel, 0, c_out - 1, f"the pointwise output of {request.layer} has {c_out} channels")
        return await rt.inference_pool.run(self._job, entry, request, deadline, deadline=deadline, device=rt.device)

    def _job(self, entry: LoadedModel, r: DecompositionRequest, deadline: Deadline) -> dict[str, Any] | BinaryResult:
        maps, cached = self.runtime.layer_maps(entry, r.upload, r.layer, deadline)
        module = entry.separable[r.layer]
        depthwise = maps["depthwise"].float()
        d = decompose(module, depthwise.to(module.pointwise.weight.device), r.channel, r.top)
        contributions = d.contributions.float().cpu()
        total, rest = d.total.float().cpu(), d.rest.float().cpu()
        pointwise = maps["pointwise"][r.channel].float()
        err = float((total - pointwise).abs().max())
        order = [int(i) for i in d.order.cpu()]
        weights = d.weights.float().cpu()
        energy = d.energy.float().cpu()
        kernels = module.depthwise.weight.detach()[order, 0].float().cpu()  # [top, 3, 3]
        facts = {"max_abs_error": f"{err:.3g}"}
        if r.fmt == "npz":
            arrays = {
                "weights": weights.numpy(),
                "order": np.asarray(order, dtype=np.int64),
                "energy": energy.numpy(),
                "contributions": contributions.numpy(),
                "kernels": kernels.numpy(),
                "rest": rest.numpy(),
                "total": total.numpy(),
                "pointwise": pointwise.numpy(),
            }
            filename = f"{r.layer}.ch{r.channel}.decomposition.npz"
            return BinaryResult(npz_bytes(arrays), "application/x-npz", r.upload.sha, entry.id, facts, filename=filename)
        stack = torch.cat([contributions, rest[None], total[None], pointwise[None]])
        if r.fmt == "png":
            labels = [f"{w:+.2f} x dw{i}" for i, w in zip(order, weights[order].tolist())] + ["rest", "sum", f"pw{r.channel}"]
            png = render.montage_png(stack.numpy(), labels=labels, colormap=r.colormap, normalize="layer", tile_px=r.tile_px)
            return BinaryResult(png, "image/png", r.upload.sha, entry.id, facts)
        # One scale for every map (they add up), so the tiles compare.
        vmin, vmax = float(stack.min()), float(stack.max())

        def summary(m: torch.Tensor) -> dict[str, Any]:
            a = m.numpy()
            return {"min": float(a.min()), "max": float(a.max()), "png": b64png(tile_png(a, r.tile_px, r.colormap, vmin, vmax))}

        return {
            "image_id": r.upload.sha,
            "model": entry.id,
            "layer": r.layer,
            "channel": r.channel,
            "top": len(order),
            "shape": list(total.shape),
            "weights": weights.tolist(),
            "contributions": [
                {"channel": i, "weight": float(weights[i]), "energy": float(e), "kernel": kernels[j].tolist(), **summary(contributions[j])}
                for j, (i, e) in enumerate(zip(order, energy.tolist()))
            ],
            "rest": summary(rest),
            "total": summary(total),
            "pointwise": summary(pointwise),
            "max_abs_error": err,
            "colormap": r.colormap,
            "cached": cached,
            "timing_ms": deadline.elapsed_ms(),
        }
