"""GET /v1/models, /v1/models/{id}, /v1/models/{id}/layers, /v1/models/{id}/layers/{layer}/spectrum,
/v1/models/{id}/classes."""


from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from starlette.concurrency import run_in_threadpool

from xception_core.profile import SEGMENT_CANDIDATES, layer_spectrum, profile_model
from xception_core.weights import ModelCard

from ..deps import get_runtime
from ..errors import invalid_choice
from ..registry import LoadedModel
from ..runtime import Runtime
from ..schemas import ClassList, LayerSpectrum, LayerTable, ModelDetail, ModelList, Problem
from ..settings import Settings
from .common import problems

ModelId = Annotated[str, Path(max_length=200, description="Model id, as listed by GET /v1/models.")]
LayerName = Annotated[
    str, Path(max_length=100, description="Separable layer, e.g. `middle.block5.sep1` (GET /v1/models/{id}/layers lists them).")
]
SpectrumPoints = Annotated[
    int,
    Query(
        ge=0,
        le=len(SEGMENT_CANDIDATES),
        description=f"How many Inception-like segment counts to show between the two ends: 0..{len(SEGMENT_CANDIDATES)} "
        f"(the first of {', '.join(map(str, SEGMENT_CANDIDATES))} that divide the output channels and are below the input channels).",
    ),
]


def _summary(runtime: Runtime, card: ModelCard, default: str) -> dict[str, Any]:
    return {
        "id": card.id,
        "description": card.description,
        "status": card.status,
        "source": card.source,
        "num_classes": card.num_classes,
        "input_size": card.preprocess.input_size,
        "default": card.id == default,
        "loaded": runtime.registry.is_loaded(card.id),
        "sha256": card.sha256,
    }


def _profile(card: ModelCard):
    return profile_model(card.config, card.preprocess.input_size)


def build(settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/v1/models", tags=["models"])

    @router.get("", response_model=ModelList, summary="Models the service can host", responses=problems(401))
    async def list_models(runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
        """Every model: the bundled one, `xception-imagenet` (status `missing` until its weights are
        downloaded), imported ones. `status` says whether the weights are installed."""
        cards = await run_in_threadpool(runtime.registry.cards)
        default = runtime.default_model()
        return {"default_model": default, "device": runtime.device, "models": [_summary(runtime, c, default) for c in cards]}

    @router.get("/{model_id}", response_model=ModelDetail, summary="One model", responses=problems(401, 404))
    async def get_model(model_id: ModelId, runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
        """The model's card (configuration, preprocessing, provenance) and size (parameters, MACs)."""
        card = await run_in_threadpool(runtime.registry.card, model_id)
        profile = await runtime.inference_pool.run(_profile, card)
        return {
            **_summary(runtime, card, runtime.default_model()),
            "config": card.config.to_dict(),
            "preprocess": card.preprocess.to_dict(),
            "total_params": profile.total_params,
            "total_macs": profile.total_macs,
            "separable_layers": [s.name for s in profile.separable],
            "segments": card.config.segments,
            "order": card.config.order,
            "parts": list(dict.fromkeys(p for s in profile.separable for p in s.parts)),
            "extra": card.extra,
            "engine": entry.predictor.info().to_dict() if (entry := runtime.registry.peek(card.id)) else None,
            "warmup_ms": entry.warmup_ms if entry else None,
            **_attribution_state(entry),
        }

    @router.get("/{model_id}/layers", response_model=LayerTable, summary="Layer table", responses=problems(401, 404))
    async def get_model_layers(model_id: ModelId, runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
        """Every layer (name, flow, kind, channels, output size, parameters, MACs) at the model's input
        size, and every separable convolution: the `layer` values the analysis endpoints accept, with
        their `parts` (the `part` values they accept), where they sit on the paper's spectrum
        (`segments`, `order`) and whether the pointwise decomposition applies."""
        card = await run_in_threadpool(runtime.registry.card, model_id)
        profile = await runtime.inference_pool.run(_profile, card)
        d = profile.to_dict()
        return {
            "model": card.id,
            "input_size": profile.input_size,
            "total_params": profile.total_params,
            "total_macs": profile.total_macs,
            "layers": d["layers"],
            "separable_layers": d["separable_layers"],
        }

    @router.get(
        "/{model_id}/layers/{layer}/spectrum",
        response_model=LayerSpectrum,
        summary="The paper's spectrum for one layer",
        responses={**problems(401, 422), 404: {"model": Problem, "description": "Unknown model or layer (the detail lists the valid ones)."}},
    )
    async def get_layer_spectrum(
        model_id: ModelId, layer: LayerName, points: SpectrumPoints = 4, runtime: Runtime = Depends(get_runtime)
    ) -> dict[str, Any]:
        """Parameters and MACs of a 3x3 layer with this separable layer's channels and output size, from
        a regular convolution (k = 1 segment) through Inception-like modules (a 1x1 convolution, then a 3x3
        convolution per segment of C_out / k channels) to the depthwise separable convolution (k = C_in)
        — Chollet (2017), section 2. Regular: C_in·C_out·9; k segments: C_in·C_out + k·(C_out/k)²·9;
        separable: C_in·9 + C_in·C_out; MACs = parameters × H × W."""
        card = await run_in_threadpool(runtime.registry.card, model_id)
        profile = await runtime.inference_pool.run(_profile, card)
        rows = {s.name: s for s in profile.separable}
        if layer not in rows:
            raise invalid_choice("layer", layer, list(rows), status=404)
        row = rows[layer]
        return {
            "model": card.id,
            "layer": row.name,
            "in_channels": row.in_channels,
            "out_channels": row.out_channels,
            "output_size": list(row.output_size),
            "points": [p.to_dict() for p in layer_spectrum(row.in_channels, row.out_channels, row.output_size, points)],
        }

    @router.get("/{model_id}/classes", response_model=ClassList, summary="Class names", responses=problems(401, 404))
    async def get_model_classes(model_id: ModelId, runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
        """The class names in index order (`target` values of attributions are these indices)."""
        card = await run_in_threadpool(runtime.registry.card, model_id)
        return {
            "model": card.id,
            "num_classes": card.num_classes,
            "classes": [{"index": i, "label": name} for i, name in enumerate(card.class_names)],
        }

    return router


def _attribution_state(entry: LoadedModel | None) -> dict[str, Any]:
    """``attribution_precision`` and ``quality_engine`` of a loaded model, once decided."""
    if entry is None or not entry.attribution_decided:
        return {"attribution_precision": None, "quality_engine": None}
    setup = entry.attribution_setup()
    engine = setup.curves.info()
    return {
        "attribution_precision": setup.precision.to_dict(),
        "quality_engine": {
            "backend": engine.backend, "precision": engine.precision, "notes": list(engine.notes),
            "shared_with_predictions": setup.reused_prediction_engine,
        },
    }
