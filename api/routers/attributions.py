"""POST /v1/attributions and GET /v1/methods (the catalogue of xception_core.attributions)."""


import inspect
from enum import Enum
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response

from xception_core import attributions as core_attr
from xception_core import render
from xception_core.attributions import AttributionRequest, format_value
from xception_core.model import PART_NAMES

from ..deps import deadline, get_features, read_image
from ..features import Features
from ..features.attributions import ExplainRequest
from ..runtime import Upload
from ..schemas import AttributionResponse, MethodList
from ..settings import Settings
from ..workers import Deadline
from .common import ANALYSIS_ERRORS, ImageField, ModelQuery, binary, binary_content, problems

Method = Literal[tuple(core_attr.METHODS)]  # type: ignore[valid-type]
OverlayColormap = Literal[render.COLORMAPS]  # type: ignore[valid-type]
LayerPart = Literal[PART_NAMES]  # type: ignore[valid-type]

_STEP_PARAMS = {"n_steps"}
_SAMPLE_PARAMS = {"nt_samples", "n_samples"}


def param_bounds(settings: Settings) -> dict[str, dict[str, Any]]:
    """Every method parameter: kind, union of ranges (capped by the settings), per-method notes."""
    out: dict[str, dict[str, Any]] = {}
    for spec in core_attr.METHODS.values():
        for p in spec.params:
            info = out.setdefault(p.name, {"kind": p.kind, "min": p.minimum, "max": p.maximum, "choices": set(p.choices or ()), "methods": [], "description": p.description})
            if p.minimum is not None:
                info["min"] = p.minimum if info["min"] is None else min(info["min"], p.minimum)
            if p.maximum is not None:
                info["max"] = p.maximum if info["max"] is None else max(info["max"], p.maximum)
            info["methods"].append((spec.name, p))
    for name, info in out.items():
        cap = settings.max_attribution_steps if name in _STEP_PARAMS else settings.max_attribution_samples if name in _SAMPLE_PARAMS else None
        if cap is not None and info["max"] is not None:
            info["max"] = min(info["max"], cap)
    return out


def method_params_dependency(settings: Settings):
    """A dependency whose signature lists every method parameter as an optional query parameter
    (so OpenAPI documents each with its range), returning the ones the client set."""
    bounds = param_bounds(settings)
    common = {p.name for p in core_attr.COMMON_PARAMS}
    parameters = []
    for name, info in bounds.items():
        kind = info["kind"]
        if kind == "int":
            base: Any = int
        elif kind == "float":
            base = float
        elif kind == "bool":
            base = bool
        else:
            base = Literal[tuple(sorted(info["choices"]))]  # type: ignore[misc]
        if name in common:
            where = "all methods"
            p0 = info["methods"][0][1]
            notes = f"default {format_value(p0.default)}"
        else:
            where = ", ".join(m for m, _ in info["methods"])
            notes = "; ".join(
                f"{m}: default {format_value(p.default)}" + (f", {format_value(p.minimum)}..{format_value(p.maximum)}" if p.minimum is not None else "")
                for m, p in info["methods"]
            )
        rng = ""
        if info["min"] is not None or info["max"] is not None:
            rng = f" Range {format_value(info['min'])}..{format_value(info['max'])}."
        description = f"{info['description'][:1].upper()}{info['description'][1:]}. For {where} ({notes}).{rng}"
        query = Query(
            ge=info["min"] if kind in ("int", "float") else None,
            le=info["max"] if kind in ("int", "float") else None,
            description=description,
        )
        parameters.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[base | None, query])
        )

    def dependency(**values: Any) -> dict[str, Any]:
        return {k: (v.value if isinstance(v, Enum) else v) for k, v in values.items() if v is not None}

    dependency.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return dependency


def build(settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["attributions"])
    method_params = method_params_dependency(settings)

    @router.get("/methods", response_model=MethodList, summary="Attribution methods", responses=problems(401))
    async def list_methods() -> dict[str, Any]:
        """Every attribution method with its parameters (kinds, defaults, ranges)."""
        bounds = param_bounds(settings)
        out = []
        for spec in core_attr.METHODS.values():
            params = []
            for p in spec.params:
                d = p.to_dict()
                cap = bounds[p.name]["max"]
                if p.maximum is not None and cap is not None and cap < p.maximum:
                    d["maximum"] = cap
                params.append(d)
            out.append({"name": spec.name, "description": spec.description, "layer_method": spec.layer_method, "costly": spec.costly, "params": params})
        return {"methods": out}

    @router.post(
        "/attributions",
        response_model=AttributionResponse,
        summary="Attribution map (Captum)",
        responses={200: {"content": binary_content(None, "image/png", "application/x-npy"), "description": "JSON, overlay PNG or NPY array (per `format`)."}, **ANALYSIS_ERRORS},
    )
    async def attributions(
        response: Response,
        image: ImageField = None,
        upload: Upload = Depends(read_image),
        model: ModelQuery = None,
        method: Annotated[Method, Query(description="Attribution method (GET /v1/methods lists them with their parameters).")] = "integrated_gradients",
        target: Annotated[int | None, Query(ge=0, description="Class index to explain, 0..classes-1; default: the predicted class.")] = None,
        layer: Annotated[str | None, Query(max_length=100, description="Separable layer for layer methods (layer_gradcam, guided_gradcam, channel_importance).")] = None,
        part: Annotated[
            LayerPart | None,
            Query(description="Part of `layer` for layer methods: one of the layer's `parts` (GET /v1/models/{id}/layers): "
                  "`depthwise` or `pointwise` in Xception; `grouped` or `conv` elsewhere on the paper's spectrum."),
        ] = None,
        format: Annotated[
            Literal["json", "png", "npy"],
            Query(description="`json`: figures and a base64 overlay; `png`: the overlay PNG; `npy`: the raw float32 array (see `array`)."),
        ] = "json",
        array: Annotated[
            Literal["attribution", "heatmap"],
            Query(description="For format=npy: `attribution` (Captum's raw output: [3, H, W], [1, h, w] or [C]) or `heatmap` ([H, W] at input resolution)."),
        ] = "attribution",
        sign: Annotated[Literal["positive", "negative", "absolute", "all"], Query(description="Which evidence the overlay shows.")] = "positive",
        opacity: Annotated[float, Query(ge=0, le=1, description="Overlay opacity at the strongest attribution, 0..1.")] = 0.5,
        colormap: Annotated[OverlayColormap | None, Query(description="Overlay colour map (default: jet, or RdBu_r for sign=all).")] = None,
        precision: Annotated[
            Literal["fp32", "mixed"] | None,
            Query(description="Default: what the model decided when it loaded (`attribution_precision` in GET /v1/models/{id}: bf16 where native and agreeing with float32, else fp32). `fp32` forces float32; `mixed` float16 autocast (CUDA only, float32 on the CPU)."),
        ] = None,
        quality: Annotated[
            Literal["none", "auc", "full"],
            Query(
                description="Which quality figures to compute: `none` returns the map alone (fastest; no deletion / insertion "
                "figures, whatever `auc_steps` defaults to), `auc` adds the deletion and insertion AUC (`auc_steps` steps), "
                "`full` also the curves and, on request, `infidelity` and `sensitivity`. A figure asked for explicitly that "
                "the level leaves out is a 422. Ask for `none` to show the map at once, then for `auc` or `full` for the "
                "figures: the map is cached on its own, so the second request computes only the figures (`X-Cache: map-hit`)."
            ),
        ] = "full",
        params: dict[str, Any] = Depends(method_params),
        features: Features = Depends(get_features),
        limit: Deadline = Depends(deadline("attribution")),
    ) -> Any:
        """Explains the target class's logit with a Captum method. Method parameters go in the query
        string next to `method`; a parameter that does not belong to the method is refused (422).
        Each answer carries the method's quality figures as `quality` asks: the convergence delta
        (integrated gradients, DeepLift), deletion and insertion AUC (Petsiuk et al.; `auc_steps=0` or
        `quality=none` skips them) and, on request, Captum's infidelity and sensitivity_max.
        Finished attributions are cached on the server (keyed by the model and its weights, the image,
        the method, target, layer, part, precision and every parameter): an identical request is
        answered from the cache, in any format, and says so in `X-Cache: hit`; a request for other
        quality figures of a cached map computes only the figures (`X-Cache: map-hit`); else `miss`.
        `X-Attribution-Precision` says what the method ran in (`fp32`, `bf16`, `mixed`)."""
        request = ExplainRequest(
            model=model,
            upload=upload,
            attribution=AttributionRequest(method, target, layer, part, params),
            fmt=format,
            array=array,
            sign=sign,
            opacity=opacity,
            colormap=colormap,
            precision=precision,
            quality=quality,
        )
        result = await features.attributions.explain(request, limit)
        if isinstance(result, dict):
            response.headers["X-Cache"] = result["cache"]
            response.headers["X-Attribution-Precision"] = result["precision"]
            return result
        return binary(result)

    return router
