"""GET /v1/spectrum/results: the paper's spectrum trained and measured (the committed run, or the
run in the ``spectrum_dir`` setting)."""


from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from xception_core.spectrum_report import committed_results, read_results

from ..errors import ApiError
from ..schemas import SpectrumResults
from ..settings import Settings
from .common import problems

COMMITTED = (
    "the committed run (docs/spectrum in the repository, shipped with the service): "
    "`xception-demo spectrum` on the bundled architecture, every point trained on the same generated data, "
    "seeds and number of steps"
)
CONFIGURED = (
    "a run of `xception-demo spectrum` configured on the server (setting spectrum_dir), every point trained "
    "on the same data, seeds and number of steps"
)


def _results(folder: Path | None) -> dict[str, Any]:
    """The configured run's results (read on every request: a run may still be adding points), else the committed run's."""
    return committed_results() if folder is None else read_results(folder / "spectrum.json")


def _point(p: dict[str, Any], curves: bool) -> dict[str, Any]:
    out = {k: v for k, v in p.items() if k != "curve"}
    out["order"] = p["order"] or None  # the CSV's "" for k = 1: a regular convolution has no order
    if curves:
        out["curve"] = p["curve"]
    return out


def build(settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/v1/spectrum", tags=["spectrum"])

    @router.get("/results", response_model=SpectrumResults,
                summary="The paper's spectrum, trained", responses=problems(401, 503))
    async def get_spectrum_results(
        curves: Annotated[bool, Query(description="Also each point's validation curve (step, epoch, train_loss, val_top1).")] = False,
    ) -> dict[str, Any]:
        """Validation top-1 of whole networks built at points of the paper's spectrum -- a regular
        convolution (k = 1), Inception-like modules (k segments, 1x1 first), extreme Inception and
        Xception's depthwise separable convolution (k = C, either order) -- trained alike, with their
        parameters and MACs (counted by the same formula as GET .../layers/{layer}/spectrum) and the
        inference and training-step times measured on the machine named in `machine`."""
        folder = settings.spectrum_dir
        try:
            data = await run_in_threadpool(_results, folder)
        except ValueError as exc:
            where = "of the configured run (setting spectrum_dir)" if folder else "shipped with the service"
            # the server's paths stay on the server: the detail names the file, not its folder
            reason = str(exc).replace(str(folder), "spectrum_dir") if folder else str(exc)
            raise ApiError(503, "spectrum-results-unavailable", f"the spectrum results {where} cannot be read: {reason}") from None
        timing = data.get("machine", {}).get("before_timing", {})
        return {
            "source": COMMITTED if folder is None else CONFIGURED,
            "settings": data.get("base", {}),
            "machine": {k: timing.get(k) for k in ("cpu", "flags", "cores", "torch")},
            "timing": data.get("timing", {}),
            "points": [_point(p, curves) for p in data["points"]],
        }

    return router
