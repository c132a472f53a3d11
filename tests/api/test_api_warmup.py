"""No cold first request: a model that loads runs each engine once before it serves."""

from __future__ import annotations

from unittest import mock

from fastapi.testclient import TestClient

from apifixtures import *  # noqa: F401,F403
from apihelpers import MODEL_ID, files, make_app
from api.registry import LoadedModel


def test_loading_warms_every_engine_before_the_first_request(tiny_model, png):
    app = make_app(tiny_model, preload_default_model=False)
    calls: list[int] = []
    with TestClient(app, raise_server_exceptions=False) as c:
        registry = app.state.registry
        assert not registry.is_loaded(MODEL_ID)
        real = LoadedModel.warm_up

        def spy(entry):
            calls.append(entry.id)
            return real(entry)

        with mock.patch.object(LoadedModel, "warm_up", spy):
            assert c.post("/v1/predict", files=files(png)).status_code == 200
        entry = registry.peek(MODEL_ID)
        assert calls == [MODEL_ID]  # once, when the model loaded
        assert set(entry.warmup_ms) == {"predict", "capture", "replica", "replica_fused", "attribution_setup", "quality_engine"}
        assert entry.attribution_decided  # the attributions' precision and curve engine, decided at load
        # the attribution replicas were made (and ran) during the load, not by a request
        assert len(entry._replicas[True]) == 1 and len(entry._replicas[False]) == 1
        assert c.get(f"/v1/models/{MODEL_ID}").json()["warmup_ms"] == entry.warmup_ms
        # the warm-up left nothing behind on the replicas
        for model in entry._replicas[True] + entry._replicas[False]:
            assert all(p.grad is None for p in model.parameters())
            assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_the_warm_up_can_be_switched_off(tiny_model, png):
    app = make_app(tiny_model, warm_up=False, preload_default_model=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.post("/v1/predict", files=files(png)).status_code == 200
        entry = app.state.registry.peek(MODEL_ID)
        assert entry.warmup_ms is None and entry._replicas == {False: [], True: []}
        detail = c.get(f"/v1/models/{MODEL_ID}").json()
        assert detail["warmup_ms"] is None and detail["attribution_precision"] is None and detail["quality_engine"] is None
        # without the warm-up the first attribution decides (once)
        assert c.post("/v1/attributions?method=saliency&quality=auc&auc_steps=2", files=files(png)).status_code == 200
        assert entry.attribution_decided
        assert c.get(f"/v1/models/{MODEL_ID}").json()["attribution_precision"]["requested"] == "auto"


def test_the_warm_up_builds_the_reduced_net_where_input_methods_run_in_bf16(tiny_model, png, monkeypatch):
    """The first bf16 input attribution finds its replica's reduced-precision net made and run."""
    from xception_core.attributions import reduced
    from xception_core.attributions.fast import PrecisionChoice

    for input_family, integrated in [("bf16", "fp32"), ("fp32", "bf16"), ("fp32", "fp32")]:
        choice = PrecisionChoice("auto", input=input_family, integrated=integrated, layer="bf16")
        monkeypatch.setattr("api.registry.choose_attribution_precision", lambda model, check, c=choice: c)
        app = make_app(tiny_model, preload_default_model=False)
        with TestClient(app, raise_server_exceptions=False) as c:
            assert c.post("/v1/predict", files=files(png)).status_code == 200
            entry = app.state.registry.peek(MODEL_ID)
            (fused,), (plain,) = entry._replicas[True], entry._replicas[False]
            built = reduced._NETS.get(fused)
            assert (built is not None) == ("bf16" in (input_family, integrated)), choice
            assert reduced._NETS.get(plain) is None
            if built is not None:
                assert all(p.grad is None for p in built.net.parameters())
