"""Prediction engines (xception_core.engine): every backend gives the eager float32 logits, and
every failure falls back to eager float32 with the reason."""

from __future__ import annotations

import sys
import threading
from dataclasses import replace

import pytest
import torch
from support import SMALL, calibrate_batchnorm, photo_batch

from xception_core.engine import BACKENDS, EngineOptions, Predictor, native_reduced_precision
from xception_core.model import Xception

SIZE = 96


@pytest.fixture(scope="module")
def model_and_batch(photos) -> tuple[Xception, torch.Tensor]:
    torch.manual_seed(0)
    model = Xception(SMALL)
    batch = photo_batch(photos, SIZE)
    calibrate_batchnorm(model, batch)
    return model.eval(), batch


def _expected(model: Xception, batch: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(batch)


def _assert_logits(predictor: Predictor, model: Xception, batch: torch.Tensor) -> None:
    logits, reduced = predictor.predict(batch)
    expected = _expected(model, batch)
    assert expected.std(dim=0).max() > 1e-3  # the logits depend on the image
    assert logits.dtype == torch.float32 and logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    assert not bool(reduced.any())
    # batches of other sizes (micro-batching sends 1..N)
    torch.testing.assert_close(predictor(batch[:1]), expected[:1], atol=1e-4, rtol=0)
    torch.testing.assert_close(predictor(batch[1:]), expected[1:], atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", ["eager", "onnxruntime"])
def test_backend_gives_the_eager_logits(model_and_batch, backend):
    model, batch = model_and_batch
    predictor = Predictor(model, input_size=SIZE, options=EngineOptions(backend=backend))
    assert predictor.backend == backend and predictor.precision == "fp32" and predictor.notes == []
    _assert_logits(predictor, model, batch)
    assert predictor.info().to_dict()["backend"] == backend


@pytest.mark.slow
def test_compile_backend_gives_the_eager_logits(model_and_batch):
    """torch.compile (inductor) here: a C++ compiler is present on the CI machine; if it were
    not, the predictor would fall back to eager and say why -- which this test reports."""
    model, batch = model_and_batch
    predictor = Predictor(model, input_size=SIZE, options=EngineOptions(backend="compile"))
    assert predictor.backend == "compile", predictor.notes
    _assert_logits(predictor, model, batch)
    assert predictor.backend == "compile", predictor.notes  # no run-time fallback either


def test_auto_is_onnxruntime_on_the_cpu_when_installed(model_and_batch):
    model, batch = model_and_batch
    predictor = Predictor(model, input_size=SIZE)
    assert predictor.backend == "onnxruntime" and predictor.requested_backend == "auto"
    _assert_logits(predictor, model, batch)


def test_auto_is_eager_without_onnxruntime(model_and_batch, monkeypatch):
    model, batch = model_and_batch
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    predictor = Predictor(model, input_size=SIZE)
    assert predictor.backend == "eager" and predictor.notes == []
    _assert_logits(predictor, model, batch)


def test_missing_onnxruntime_falls_back_to_eager_with_the_reason(model_and_batch, monkeypatch):
    model, batch = model_and_batch
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    predictor = Predictor(model, input_size=SIZE, options=EngineOptions(backend="onnxruntime"))
    assert predictor.backend == "eager"
    assert len(predictor.notes) == 1 and predictor.notes[0] == "onnxruntime not used: RuntimeError: onnxruntime is not installed (pip install onnx onnxruntime)"
    _assert_logits(predictor, model, batch)


def test_failing_compile_falls_back_to_eager(model_and_batch, monkeypatch):
    model, batch = model_and_batch

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    predictor = Predictor(model, input_size=SIZE, options=EngineOptions(backend="compile"))
    assert predictor.backend == "eager"
    assert predictor.notes == ["compile not used: RuntimeError: no C++ compiler"]
    _assert_logits(predictor, model, batch)


def test_a_backend_that_gives_wrong_logits_is_not_used(model_and_batch, monkeypatch):
    model, batch = model_and_batch
    monkeypatch.setattr(torch, "compile", lambda m: (lambda x: m(x) + 1.0))
    predictor = Predictor(model, input_size=SIZE, options=EngineOptions(backend="compile"))
    assert predictor.backend == "eager"
    assert "differ from eager float32" in predictor.notes[0]
    _assert_logits(predictor, model, batch)


def test_a_backend_failing_at_run_time_switches_to_eager(model_and_batch):
    model, batch = model_and_batch
    predictor = Predictor(model, input_size=SIZE, options=EngineOptions(backend="onnxruntime"))
    calls = []

    def failing(x):
        calls.append(x.shape[0])
        raise RuntimeError("session lost")

    predictor._forward = failing
    _assert_logits(predictor, model, batch)  # answered by eager
    assert calls == [len(batch)]  # tried once, then never again
    assert predictor.backend == "eager"
    assert predictor.notes == ["onnxruntime failed at run time, eager since: RuntimeError: session lost"]


def test_out_of_memory_is_not_hidden_by_the_fallback(model_and_batch):
    model, batch = model_and_batch
    predictor = Predictor(model, input_size=SIZE, options=EngineOptions(backend="onnxruntime"))

    def oom(x):
        raise torch.OutOfMemoryError("simulated")

    predictor._forward = oom
    with pytest.raises(torch.OutOfMemoryError):
        predictor.predict(batch)
    assert predictor.backend == "onnxruntime"


def test_concurrent_calls_agree(model_and_batch):
    model, batch = model_and_batch
    predictor = Predictor(model, input_size=SIZE, options=EngineOptions(backend="onnxruntime"))
    expected = _expected(model, batch)
    results: list[torch.Tensor] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for _ in range(3):
                results.append((i, predictor(batch[i : i + 1])))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i % len(batch),)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 24
    for i, logits in results:
        torch.testing.assert_close(logits, expected[i : i + 1], atol=1e-4, rtol=0)


def test_the_model_is_left_untouched(model_and_batch):
    model, batch = model_and_batch
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Predictor(model, input_size=SIZE, options=EngineOptions(backend="onnxruntime"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_unfused_predictor_uses_the_model_itself(model_and_batch):
    model, batch = model_and_batch
    predictor = Predictor(model, input_size=SIZE, options=EngineOptions(backend="eager", fuse_batchnorm=False))
    assert predictor.model is model
    _assert_logits(predictor, model, batch)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_needs_native_support(model_and_batch, precision):
    model, batch = model_and_batch
    why = native_reduced_precision(precision, torch.device("cpu"))
    predictor = Predictor(model, input_size=SIZE, options=EngineOptions(backend="eager", precision=precision))
    if why is None:  # a CPU with AVX512-BF16 / AMX
        assert predictor.precision == precision and predictor.notes == []
    else:
        assert predictor.precision == "fp32"
        assert predictor.notes == [f"{precision} not used: {why}"]
        _assert_logits(predictor, model, batch)


def test_reduced_precision_with_onnxruntime_falls_back_to_eager(model_and_batch):
    """onnxruntime runs float32 only: an explicit onnxruntime + bf16 keeps bf16 on eager."""
    model, batch = model_and_batch
    predictor = Predictor(model, input_size=SIZE, options=EngineOptions(backend="onnxruntime", precision="bf16"), require_native=False)
    assert predictor.precision == "bf16" and predictor.backend == "eager"
    assert "runs float32, not bf16" in predictor.notes[0]
    logits, reduced = predictor.predict(batch)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, _expected(model, batch), atol=0.1, rtol=0.05)


def test_auto_with_bf16_is_eager(model_and_batch):
    model, _ = model_and_batch
    predictor = Predictor(model, input_size=SIZE, options=EngineOptions(precision="bf16"), require_native=False)
    assert predictor.backend == "eager" and predictor.precision == "bf16" and predictor.notes == []


def test_reduced_precision_guard_recomputes_near_ties(model_and_batch):
    model, batch = model_and_batch
    expected = _expected(model, batch)
    everything = Predictor(model, input_size=SIZE, options=EngineOptions(backend="eager", precision="bf16", margin=1e9), require_native=False)
    logits, reduced = everything.predict(batch)
    assert not bool(reduced.any())
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    nothing = Predictor(model, input_size=SIZE, options=EngineOptions(backend="eager", precision="bf16", margin=0.0), require_native=False)
    logits, reduced = nothing.predict(batch)
    assert bool(reduced.all())
    assert not torch.equal(logits, expected)  # bfloat16 really ran
    torch.testing.assert_close(logits, expected, atol=0.1, rtol=0.05)


def test_a_top1_guard_recomputes_only_close_top1s(model_and_batch):
    """``guard_top=1`` looks at the gap between the two best logits only: with a margin between
    the smallest top-1 gap and the smallest top-5 gap, the top-5 guard redoes rows the top-1 guard
    keeps."""
    model, batch = model_and_batch
    expected = _expected(model, batch)
    top = expected.topk(6, dim=1).values
    gap1 = (top[:, 0] - top[:, 1])
    gap5 = (top[:, :-1] - top[:, 1:]).min(dim=1).values
    margin = float(gap1.min()) * 0.5  # every top-1 gap is safely above it ...
    assert bool((gap5 < margin).any())  # ... while some top-5 gap is below it
    options = EngineOptions(backend="eager", precision="bf16", margin=margin)
    _, reduced_top1 = Predictor(model, input_size=SIZE, options=replace(options, guard_top=1), require_native=False).predict(batch)
    _, reduced_top5 = Predictor(model, input_size=SIZE, options=replace(options, guard_top=5), require_native=False).predict(batch)
    assert bool(reduced_top1.all())
    assert int(reduced_top5.sum()) < len(batch)
    with pytest.raises(ValueError, match="guard_top"):
        replace(options, guard_top=0)


@pytest.mark.parametrize("kwargs, message", [({"backend": "tensorrt"}, "unknown backend"), ({"precision": "int8"}, "unknown precision")])
def test_bad_choices_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EngineOptions(**kwargs)


def test_mixed_precision_asks_float16_on_cuda_only():
    """``mixed_precision`` turns a float32 request into float16 on CUDA; elsewhere, and for an
    explicit reduced precision, the precision is what it says."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert EngineOptions().precision_on(cuda) == "fp32"
    assert EngineOptions(mixed_precision=True).precision_on(cuda) == "fp16"
    assert EngineOptions(mixed_precision=True).precision_on(cpu) == "fp32"
    assert EngineOptions(precision="bf16", mixed_precision=True).precision_on(cuda) == "bf16"


def test_the_predictor_asks_what_its_options_say(model_and_batch):
    model, _ = model_and_batch
    options = EngineOptions(backend="eager", fuse_batchnorm=False, margin=0.25, guard_top=2)
    predictor = Predictor(model, input_size=SIZE, options=options)
    assert predictor.options is options and predictor.model is model
    assert predictor.info().requested_backend == "eager" and predictor.info().requested_precision == "fp32"


def test_the_api_settings_offer_every_backend():
    import typing

    from api.settings import Settings

    assert typing.get_args(Settings.model_fields["predict_backend"].annotation) == BACKENDS
    assert set(typing.get_args(Settings.model_fields["predict_precision"].annotation)) <= {"fp32", "bf16"}
