"""Every setting of the REST service, in one pydantic-settings class.

Each field is read from the environment variable ``XCEPTION_<FIELD>`` (upper
case), e.g. ``XCEPTION_MAX_UPLOAD_BYTES=5000000``. ``api/README_SETTINGS.md``
lists them all; keep the two in step (``tests/api/test_settings.py`` checks).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from xception_core.engine import EngineOptions

MiB = 1024 * 1024
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
#: The prediction engine's defaults (one definition, in the core); the service differs only in
#: ``predict_mixed_precision``.
_ENGINE = EngineOptions()


class Settings(BaseSettings):
    """Configuration of the Xception Explorer API (environment prefix ``XCEPTION_``)."""

    model_config = SettingsConfigDict(env_prefix="XCEPTION_", extra="ignore", validate_default=True)

    # --- serving ---------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Interface `xception-demo serve` binds to.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port `xception-demo serve` listens on.")
    home: Path | None = Field(
        None,
        description="Weights cache directory (models, downloads); shared with the CLI. "
        "Default: the user's cache directory.",
    )

    spectrum_dir: Path | None = Field(
        None,
        description="Output folder of an `xception-demo spectrum` run (its `spectrum.json`) whose results "
        "`GET /v1/spectrum/results` serves and the Architecture page draws (a relative path is taken from the folder "
        "the command was started in). Default: the committed run, shipped with the package.",
    )

    # --- models and device -----------------------------------------------------
    default_model: str | None = Field(
        None,
        description="Model used when a request names none. Default: `xception-imagenet` when its "
        "weights are in the cache, else the bundled model.",
    )
    device: str = Field(
        "auto", description="Torch device: `auto` (CUDA when present, else CPU), `cpu`, `cuda`, `cuda:N`, `mps`."
    )
    max_loaded_models: int = Field(
        2, ge=1, le=16, description="Models kept loaded at once (least recently used is unloaded)."
    )
    preload_default_model: bool = Field(
        True, description="Load the default model at start-up (`/readyz` answers 503 until it is loaded)."
    )
    predict_mixed_precision: bool = Field(
        True,
        description="On CUDA, predict under float16 autocast. An image whose six best logits lie closer "
        "than `mixed_precision_margin` is recomputed in float32, so the top-5 equals the float32 top-5 "
        "(see `mixed_precision_guard_top`).",
    )
    predict_backend: Literal["auto", "eager", "compile", "onnxruntime"] = Field(
        _ENGINE.backend,
        description="What computes predictions: `eager` PyTorch; `compile` (torch.compile, compiled when the "
        "model loads); `onnxruntime` (the model exported to ONNX in memory, CPU, float32); `auto` = onnxruntime "
        "on the CPU when installed and `predict_precision` is fp32, else eager. A backend that fails its "
        "check falls back to eager (`GET /v1/models/{id}` says why). Activations and attributions always use PyTorch.",
    )
    predict_precision: Literal["fp32", "bf16"] = Field(
        _ENGINE.precision,
        description="`bf16`: predict under bfloat16 autocast where the hardware computes it natively (CUDA GPUs "
        "with bf16, CPUs with AVX512-BF16 or AMX; elsewhere float32, and `GET /v1/models/{id}` says why), "
        "with the same float32 guard as `predict_mixed_precision`.",
    )
    fuse_batchnorm: bool = Field(
        _ENGINE.fuse_batchnorm,
        description="Predict with a copy of the model whose BatchNorms are folded into the convolutions "
        "(same logits within float rounding, faster). Activations, decompositions and attributions always "
        "use the unfused model. Costs one more copy of the weights per loaded model.",
    )
    warm_up: bool = Field(
        True,
        description="When a model loads, run its prediction engine, its capture model and one attribution replica of "
        "each kind once on a generated image (forward and backward), so the first request gets the steady-state time "
        "(the load takes that much longer; `GET /v1/models/{id}` shows `warmup_ms`).",
    )
    mixed_precision_margin: float = Field(
        _ENGINE.margin, ge=0, le=10, description="Logit gap under which a mixed-precision prediction is redone in float32."
    )
    mixed_precision_guard_top: int = Field(
        _ENGINE.guard_top,
        ge=1,
        le=100,
        description="How many leading classes the float32 guard keeps exact: a reduced-precision prediction whose "
        "`mixed_precision_guard_top + 1` best logits lie closer than `mixed_precision_margin` is redone in float32. "
        "5 (the default) keeps the top-5 exact; 1 only the top-1, and recomputes far fewer images.",
    )
    attribution_precision: Literal["auto", "fp32", "mixed"] = Field(
        "auto",
        description="Default precision of attributions. `auto`: decided once when a model loads, by family -- bfloat16 "
        "where the hardware computes it natively (AVX512-BF16 / AMX, bf16 GPUs) and the family's judge (saliency, "
        "Integrated Gradients, Grad-CAM) makes heat maps that agree with float32 (Spearman >= 0.99 on generated "
        "images), else float32 (`GET /v1/models/{id}` says which and why); input methods then run on a folded net whose "
        "entry flow stays float32, layer methods in autocast; DeepLift, Guided Backprop and occlusion always in float32. "
        "The deletion / insertion curves run on the fastest checked engine. `fp32`: float32 everywhere. "
        "`mixed`: float16 autocast (CUDA only). A request can ask for `precision=fp32` or `mixed`.",
    )
    torch_threads: int | None = Field(
        None, ge=1, le=256, description="torch intra-op threads (default: torch's choice)."
    )
    keep_freed_memory: bool = Field(
        True,
        description="On glibc (Linux): serve large tensors from the heap and keep freed memory for the next "
        "computation (`mallopt`: no mmap, no trimming, one arena; `xception_core.allocator`) instead of mapping and "
        "faulting gigabytes afresh on every attribution pass; the process then keeps the memory of its largest "
        "computation. `false`: glibc's defaults.",
    )

    # --- work scheduling -------------------------------------------------------
    inference_workers: int = Field(
        2, ge=1, le=64, description="Threads for decoding, predictions, activations and decompositions."
    )
    attribution_workers: int = Field(
        1, ge=1, le=64, description="Threads for attributions (a separate pool: slow work never blocks predictions)."
    )
    max_pending_jobs: int = Field(
        64, ge=1, le=100_000, description="Jobs queued per pool before new requests get 503 (Retry-After)."
    )
    batch_max_size: int = Field(16, ge=1, le=512, description="Largest micro-batch of concurrent predictions.")
    batch_max_wait_ms: float = Field(
        5.0,
        ge=0,
        le=1000,
        description="How long the first prediction of a micro-batch waits for company, and only while other "
        "predictions for the same model are being decoded (a lone request never waits).",
    )
    predict_timeout_s: float = Field(30.0, gt=0, le=3600, description="Deadline of a prediction request (504 after).")
    activations_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="Deadline of an activations request (504 after)."
    )
    decomposition_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="Deadline of a decomposition request (504 after)."
    )
    attribution_timeout_s: float = Field(
        180.0, gt=0, le=3600, description="Deadline of an attribution request (504 after; the work is aborted)."
    )
    visualisation_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="Deadline of a feature visualisation request (504 after; the optimisation is cancelled)."
    )
    atlas_timeout_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="Deadline of an atlas request (504 after). A first request that builds a model's atlas keeps "
        "building after a 504; later requests answer 503 with the progress until it is done.",
    )

    # --- limits ----------------------------------------------------------------
    max_upload_bytes: int = Field(
        10 * MiB, ge=1024, le=1024 * MiB, description="Largest request body of single-image endpoints (413 beyond)."
    )
    max_batch_upload_bytes: int = Field(
        32 * MiB, ge=1024, le=4096 * MiB, description="Largest request body of `/v1/predict/batch` (413 beyond)."
    )
    body_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="A request body that pauses longer than this between bytes is answered 408."
    )
    max_image_pixels: int = Field(
        40_000_000, ge=1024, le=500_000_000, description="Largest width x height decoded (413 beyond, read from the header)."
    )
    max_batch_images: int = Field(16, ge=1, le=256, description="Most images in one `/v1/predict/batch` request.")
    max_top_k: int = Field(100, ge=1, le=10_000, description="Largest `top_k` of predictions.")
    max_channels: int = Field(
        64, ge=1, le=4096, description="Most channels (or decomposition terms) returned by one request."
    )
    max_tile_px: int = Field(256, ge=16, le=2048, description="Largest PNG tile side (`tile_px`).")
    max_attribution_steps: int = Field(
        256, ge=1, le=100_000, description="Upper bound of `n_steps` (also capped by the method's own maximum)."
    )
    max_visualisation_steps: int = Field(
        512, ge=1, le=1024, description="Upper bound of a feature visualisation's `steps` (the core allows at most 1024)."
    )
    max_visualisation_size: int = Field(
        256, ge=71, le=512, description="Upper bound of a feature visualisation's `size` in pixels (71..this; the core allows at most 512)."
    )
    max_atlas_k: int = Field(
        64, ge=1, le=64, description="Upper bound of an atlas entry's `k` (also capped by the examples the index keeps per channel)."
    )
    max_thumb_px: int = Field(256, ge=16, le=1024, description="Largest side of an atlas example's thumbnail (`thumb_px`).")
    atlas_data: Path | None = Field(
        None,
        description="Folder of images (read recursively) the service builds the atlas of a model from when the model has "
        "none (`xception-demo atlas build` otherwise). The bundled model's atlas is built from its generated data set "
        "without it. Clients never name a folder.",
    )
    max_attribution_samples: int = Field(
        64, ge=1, le=100_000, description="Upper bound of sample counts (`nt_samples`, `n_samples`, `n_perturb_samples`)."
    )

    # --- cache -----------------------------------------------------------------
    cache_max_bytes: int = Field(
        512 * MiB,
        ge=0,
        le=1024 * 1024 * MiB,
        description="Bytes of preprocessed inputs, logits and captured layers kept (LRU); 0 disables the cache.",
    )
    image_store_bytes: int = Field(
        256 * MiB,
        ge=0,
        le=1024 * 1024 * MiB,
        description="Bytes of uploaded images kept for reuse by `image_id` (least recently used first out); "
        "0 keeps none (every request then sends its image).",
    )
    image_store_ttl_s: float = Field(
        3600.0,
        gt=0,
        le=30 * 86400,
        description="Seconds an uploaded image is kept after it was last stored or used; after that its "
        "`image_id` answers 404 (upload again via `POST /v1/images`).",
    )
    attribution_cache_bytes: int = Field(
        128 * MiB,
        ge=0,
        le=1024 * 1024 * MiB,
        description="Bytes of finished attributions kept (LRU; a repeated identical request is answered from "
        "it, `X-Cache: hit`); 0 disables it.",
    )
    cache_activation_dtype: Literal["float32", "float16"] = Field(
        "float32",
        description="dtype of cached layer maps; `float16` halves their memory at ~1e-3 relative precision "
        "(decompositions then sum to the pointwise output within that precision).",
    )

    # --- security --------------------------------------------------------------
    api_key: SecretStr | None = Field(
        None, description="When set, every `/v1` request must send it in the `X-API-Key` header (401 otherwise)."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed by CORS, comma-separated (`*` for any). Empty (the default): CORS closed.",
    )

    # --- observability ---------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_json: bool = Field(True, description="Structured JSON logs (one object per line) instead of plain text.")
    access_log: bool = Field(True, description="Log one line per request (method, route, status, duration, request id).")
    metrics_enabled: bool = Field(True, description="Serve Prometheus metrics at `/metrics`.")
    docs_enabled: bool = Field(True, description="Serve the OpenAPI schema and its docs (`/docs`, `/openapi.json`).")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE.fullmatch(value):
            raise ValueError("device must be auto, cpu, mps, cuda or cuda:N")
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Settings":
        if self.max_batch_upload_bytes < self.max_upload_bytes:
            raise ValueError("max_batch_upload_bytes must be at least max_upload_bytes")
        return self

    def engine_options(self) -> EngineOptions:
        """The prediction engines' options (``predict_*``, ``fuse_batchnorm``, ``mixed_precision_*``)."""
        return EngineOptions(
            backend=self.predict_backend,
            precision=self.predict_precision,
            fuse_batchnorm=self.fuse_batchnorm,
            margin=self.mixed_precision_margin,
            guard_top=self.mixed_precision_guard_top,
            mixed_precision=self.predict_mixed_precision,
        )


def settings_table() -> str:
    """The Markdown table of every setting (``api/README_SETTINGS.md``; ``python -m api.settings`` rewrites it)."""
    rows = ["| environment variable | default | description |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if default is None:
            shown = "(none)"
        elif isinstance(default, bool):
            shown = f"`{str(default).lower()}`"
        elif isinstance(default, list):
            shown = "(empty)" if not default else f"`{','.join(default)}`"
        else:
            shown = f"`{default}`"
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `XCEPTION_{name.upper()}` | {shown} | {description} |")
    return "\n".join(rows)


SETTINGS_README_HEADER = """# API settings

Every setting of the REST service (`xception-demo serve`) is read from an environment variable
with the prefix `XCEPTION_` (class `api.settings.Settings`, pydantic-settings). Sizes are in bytes,
times in seconds unless the name says `_ms`. Lists (`XCEPTION_CORS_ORIGINS`) are comma-separated
or JSON. Example:

```sh
XCEPTION_DEVICE=cuda XCEPTION_MAX_UPLOAD_BYTES=5000000 XCEPTION_API_KEY=change-me \\
XCEPTION_CORS_ORIGINS=http://localhost:8501 xception-demo serve --host 0.0.0.0 --port 8000
```

Generated by `python -m api.settings` (a test keeps this file and the class in step).

"""


def write_readme(path: "Path | None" = None) -> Path:
    path = path or Path(__file__).with_name("README_SETTINGS.md")
    path.write_text(SETTINGS_README_HEADER + settings_table() + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    print(write_readme())
