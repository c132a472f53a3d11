"""GET /v1/models, /v1/models/{id}, /v1/models/{id}/layers, /v1/models/{id}/classes."""


from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from starlette.concurrency import run_in_threadpool

from xception_core.profile import profile_model
from xception_core.weights import ModelCard

from ..deps import get_service
from ..schemas import ClassList, LayerTable, ModelDetail, ModelList
from ..service import Service
from ..settings import Settings
from .common import problems

ModelId = Annotated[str, Path(max_length=200, description="Model id, as listed by GET /v1/models.")]


def _summary(service: Service, card: ModelCard, default: str) -> dict[str, Any]:
    return {
        "id": card.id,
        "description": card.description,
        "status": card.status,
        "source": card.source,
        "num_classes": card.num_classes,
        "input_size": card.preprocess.input_size,
        "default": card.id == default,
        "loaded": service.registry.is_loaded(card.id),
        "sha256": card.sha256,
    }


def _profile(card: ModelCard):
    return profile_model(card.config, card.preprocess.input_size)


def build(settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/v1/models", tags=["models"])

    @router.get("", response_model=ModelList, summary="Models the service can host", responses=problems(401))
    async def list_models(service: Service = Depends(get_service)) -> dict[str, Any]:
        """Every model: the bundled one, `xception-imagenet` (status `missing` until its weights are
        downloaded), imported ones. `status` says whether the weights are installed."""
        cards = await run_in_threadpool(service.registry.cards)
        default = service.default_model()
        return {"default_model": default, "device": service.device, "models": [_summary(service, c, default) for c in cards]}

    @router.get("/{model_id}", response_model=ModelDetail, summary="One model", responses=problems(401, 404))
    async def get_model(model_id: ModelId, service: Service = Depends(get_service)) -> dict[str, Any]:
        """The model's card (configuration, preprocessing, provenance) and size (parameters, MACs)."""
        card = await run_in_threadpool(service.registry.card, model_id)
        profile = await service.inference_pool.run(_profile, card)
        return {
            **_summary(service, card, service.default_model()),
            "config": card.config.to_dict(),
            "preprocess": card.preprocess.to_dict(),
            "total_params": profile.total_params,
            "total_macs": profile.total_macs,
            "separable_layers": [s.name for s in profile.separable],
            "extra": card.extra,
            "engine": entry.predictor.info().to_dict() if (entry := service.registry.peek(card.id)) else None,
        }

    @router.get("/{model_id}/layers", response_model=LayerTable, summary="Layer table", responses=problems(401, 404))
    async def get_layers(model_id: ModelId, service: Service = Depends(get_service)) -> dict[str, Any]:
        """Every layer (name, flow, kind, channels, output size, parameters, MACs) at the model's input
        size, and every separable convolution: the `layer` values the analysis endpoints accept, with
        the shapes their `depthwise` and `pointwise` parts have."""
        card = await run_in_threadpool(service.registry.card, model_id)
        profile = await service.inference_pool.run(_profile, card)
        d = profile.to_dict()
        return {
            "model": card.id,
            "input_size": profile.input_size,
            "total_params": profile.total_params,
            "total_macs": profile.total_macs,
            "layers": d["layers"],
            "separable_layers": d["separable_layers"],
        }

    @router.get("/{model_id}/classes", response_model=ClassList, summary="Class names", responses=problems(401, 404))
    async def get_classes(model_id: ModelId, service: Service = Depends(get_service)) -> dict[str, Any]:
        """The class names in index order (`target` values of attributions are these indices)."""
        card = await run_in_threadpool(service.registry.card, model_id)
        return {
            "model": card.id,
            "num_classes": card.num_classes,
            "classes": [{"index": i, "label": name} for i, name in enumerate(card.class_names)],
        }

    return router
