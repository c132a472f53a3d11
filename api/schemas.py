"""Response models (pydantic): they are the OpenAPI schema clients and tests rely on."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Problem(BaseModel):
    """An error (RFC 9457 problem details, media type application/problem+json)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="URI naming the kind of problem (`urn:xception-explorer:problem:<slug>`, or `about:blank`).")
    title: str = Field(description="Short summary of the kind of problem (the HTTP reason phrase).")
    status: int = Field(description="HTTP status code.")
    detail: str = Field(description="What went wrong with this request, and how to fix it.")
    instance: str | None = Field(None, description="The request path.")
    request_id: str | None = Field(None, description="The request id (also in the X-Request-ID header).")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    default_model: str
    device: str
    loaded_models: list[str]


# --------------------------------------------------------------------------- models


class ModelSummary(BaseModel):
    id: str = Field(description="Model id (use it as `model=` in analysis requests).")
    description: str
    status: Literal["available", "missing"] = Field(description="`available` when the weights are installed.")
    source: str = Field(description="Where the weights come from (`bundled`, a URL, an imported file, `in-memory`).")
    num_classes: int
    input_size: int = Field(description="Side of the square input the model sees, in pixels.")
    default: bool = Field(description="Whether requests without `model=` use this model.")
    loaded: bool = Field(description="Whether the model is loaded in memory right now.")
    sha256: str | None = Field(None, description="sha256 of the weights file.")


class ModelList(BaseModel):
    default_model: str
    device: str
    models: list[ModelSummary]


class EngineState(BaseModel):
    backend: Literal["eager", "compile", "onnxruntime"] = Field(description="What computes the predictions.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(description="Precision of the predictions' forward pass.")
    requested_backend: str = Field(description="The `predict_backend` setting.")
    requested_precision: str = Field(description="The precision asked for (settings `predict_precision`, `predict_mixed_precision`).")
    notes: list[str] = Field(description="Why what runs differs from what was asked for (fallbacks), if it does.")


class AttributionPrecisionState(BaseModel):
    precision: Literal["fp32", "bf16", "mixed"] = Field(description="What attributions run in by default: `bf16` / `fp32` for every family, `mixed` when the families differ (the `mixed` setting, float16 autocast on CUDA, shows here as fp32 with `requested` mixed).")
    input_methods: Literal["fp32", "bf16"] = Field(description="Saliency, SmoothGrad, input x gradient (judged by saliency).")
    integrated_methods: Literal["fp32", "bf16"] = Field(description="Integrated Gradients, gradient SHAP (judged by Integrated Gradients).")
    layer_methods: Literal["fp32", "bf16"] = Field(description="The layer methods (judged by Grad-CAM). DeepLift, Guided Backprop and occlusion: always fp32.")
    requested: str = Field(description="The `attribution_precision` setting.")
    reason: str | None = Field(description="Why bf16 is not used, where it is not (null when all is as asked).")
    agreement: dict[str, float] = Field(description="Smallest Spearman correlation of bf16 heat maps with float32's, by method.")


class QualityEngineState(BaseModel):
    backend: Literal["eager", "compile", "onnxruntime"] = Field(description="What computes the deletion / insertion curves.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(description="Precision of the curves' forward passes.")
    notes: list[str] = Field(description="What was not used, and why.")
    shared_with_predictions: bool = Field(description="Whether the curves run on the prediction engine itself.")


class ModelDetail(ModelSummary):
    config: dict[str, Any] = Field(description="Architecture configuration (XceptionConfig).")
    preprocess: dict[str, Any] = Field(description="Evaluation preprocessing (resize, crop, mean, std).")
    total_params: int
    total_macs: int = Field(description="Multiply-accumulates of one forward pass at `input_size`.")
    separable_layers: list[str] = Field(description="Names of the separable convolutions, in forward order.")
    segments: int | Literal["C"] = Field(description="Where the model's separable convolutions sit on the paper's spectrum: "
                                         "k segments per 3x3 convolution, 1 a regular one, `C` one per channel (Xception).")
    order: Literal["depthwise-first", "pointwise-first"] = Field(description="Which part of each separable convolution runs first.")
    parts: list[str] = Field(description="Every part name the model's layers have (GET .../layers gives each layer's).")
    extra: dict[str, Any] = Field(default_factory=dict)
    engine: EngineState | None = Field(
        None, description="How predictions run while the model is loaded; null when it is not loaded."
    )
    warmup_ms: dict[str, float] | None = Field(
        None,
        description="Milliseconds each engine's warm-up took when the model loaded (predict, capture, replica, "
        "replica_fused, attribution_setup, quality_engine); null when it is not loaded or `warm_up` is off.",
    )
    attribution_precision: AttributionPrecisionState | None = Field(
        None, description="How attributions run, decided when the model loaded (null when not loaded or not decided yet)."
    )
    quality_engine: QualityEngineState | None = Field(
        None, description="What computes the deletion / insertion curves (null when not loaded or not decided yet)."
    )


class LayerRow(BaseModel):
    name: str = Field(description="Module name, e.g. `entry.block2.sep1.depthwise`.")
    flow: str = Field(description="entry, middle, exit or head.")
    kind: str = Field(description="conv, depthwise, pointwise, skip, pool, global_pool or fc.")
    in_channels: int
    out_channels: int
    output_size: list[int] = Field(description="[H, W] of the output at the model's input size.")
    params: int
    macs: int


Part = Literal["conv", "depthwise", "grouped", "pointwise"]


class SeparableRow(BaseModel):
    name: str = Field(description="Separable layer name, e.g. `middle.block7.sep2` (use it as `layer=`).")
    flow: str
    in_channels: int = Field(description="Channels of the layer's input.")
    out_channels: int = Field(description="Channels of the layer's output.")
    output_size: list[int] = Field(description="[H, W] of every part's output.")
    depthwise_params: int = Field(description="Parameters of the 3x3 part (`depthwise`, `grouped` or, at k = 1, `conv`).")
    pointwise_params: int = Field(description="Parameters of the 1x1 part (0 for a regular convolution).")
    depthwise_macs: int = Field(description="Multiply-accumulates of the 3x3 part.")
    pointwise_macs: int = Field(description="Multiply-accumulates of the 1x1 part.")
    regular_params: int = Field(description="Parameters of a regular 3x3 convolution with the same channels (the other end of the spectrum).")
    parts: list[Part] = Field(
        description="The layer's parts in forward order, the `part` values the analysis endpoints accept for it "
        "(besides `input`): `depthwise`, `pointwise` (Xception); `grouped`, `pointwise` or `pointwise`, `grouped` "
        "(k segments); `pointwise`, `depthwise` (extreme Inception); `conv` (k = 1, a regular convolution)."
    )
    segments: int = Field(description="Groups of the 3x3 part: 1 a regular convolution ... one per channel (depthwise).")
    order: Literal["depthwise-first", "pointwise-first"] | None = Field(description="Which part runs first; null for a regular convolution.")
    spectrum_point: str = Field(description="The point of the paper's spectrum in words, e.g. `k = 4 segments, pointwise-first (Inception-like)`.")
    decomposable: bool = Field(description="Whether POST /v1/decomposition applies (depthwise, then pointwise: Xception's own build).")


class LayerTable(BaseModel):
    model: str
    input_size: int
    total_params: int
    total_macs: int
    layers: list[LayerRow]
    separable_layers: list[SeparableRow]


class ClassEntry(BaseModel):
    index: int
    label: str


class ClassList(BaseModel):
    model: str
    num_classes: int
    classes: list[ClassEntry]


class SpectrumPoint(BaseModel):
    segments: int = Field(description="k: 1 = a regular convolution, `in_channels` = depthwise separable, between: Inception-like.")
    kind: Literal["regular", "inception-like", "depthwise separable"]
    label: str = Field(description="How to show the point, e.g. `k = 4`.")
    params: int = Field(description="Parameters of that layer (no bias, no BatchNorm).")
    macs: int = Field(description="Multiply-accumulates at the layer's output size.")


class LayerSpectrum(BaseModel):
    model: str
    layer: str = Field(description="The separable layer.")
    in_channels: int
    out_channels: int
    output_size: list[int] = Field(description="[H, W] of the layer's output at the model's input size.")
    points: list[SpectrumPoint] = Field(description="From a regular convolution (k = 1) to the depthwise separable one.")


class CurvePoint(BaseModel):
    step: int
    epoch: float
    train_loss: float
    val_top1: float = Field(ge=0, le=1)


class TrainedPoint(BaseModel):
    key: str = Field(description="The point's name in the run, e.g. `k4-pointwise-first-s0`.")
    segments: int | Literal["C"] = Field(description="k segments of each 3x3 convolution: 1 a regular one, `C` one per channel.")
    order: Literal["depthwise-first", "pointwise-first"] | None = Field(description="Which part runs first; null for k = 1.")
    seed: int = Field(description="Training seed (the data and its order are the same for every point).")
    kind: str = Field(description="regular, Inception-like, grouped then 1x1, extreme Inception or depthwise separable.")
    label: str
    params: int = Field(description="Parameters of the whole network.")
    macs: int = Field(description="Multiply-accumulates of one forward pass at the run's input size.")
    val_top1: float = Field(ge=0, le=1, description="Validation top-1 after training.")
    train_seconds: float = Field(description="Wall time of the training run (depends on the machine's load then).")
    train_step_ms: float | None = Field(description="One training step per image, timed interleaved with the other points.")
    infer_ms: float | None = Field(description="Inference per image (BatchNorm folded, eval), timed interleaved with the other points.")
    steps: int = Field(description="Training steps.")
    curve: list[CurvePoint] | None = Field(None, description="The validation curve (with `curves=true`).")


class SpectrumResults(BaseModel):
    source: str = Field(description="Where the results come from.")
    settings: dict[str, Any] = Field(description="The architecture and training budget every point shared (its own `segments`, `order`, `seed` aside).")
    machine: dict[str, Any] = Field(description="The CPU (name, vector extensions, cores) and torch version the times were measured with.")
    timing: dict[str, Any] = Field(description="How the times were measured (batch, rounds, threads, model form).")
    points: list[TrainedPoint]


# --------------------------------------------------------------------------- predictions


class PredictionItem(BaseModel):
    index: int = Field(description="Class index.")
    label: str = Field(description="Class name (names can repeat; the index is the identity).")
    probability: float = Field(ge=0, le=1)


class PredictResponse(BaseModel):
    image_id: str = Field(description="sha256 (hex) of the uploaded bytes.")
    model: str
    device: str
    precision: Literal["fp32", "mixed", "bf16"] = Field(
        description="`mixed` when float16 autocast produced the result (CUDA), `bf16` for bfloat16 autocast "
        "(setting `predict_precision`); `fp32` otherwise, including near-ties recomputed in float32."
    )
    cached: bool = Field(description="Whether the logits came from the cache.")
    predictions: list[PredictionItem]
    timing_ms: float = Field(description="Server time for this request, in milliseconds.")


class ImageInfo(BaseModel):
    image_id: str = Field(description="sha256 (hex) of the uploaded bytes: pass it as `image_id` to any analysis endpoint instead of the image.")
    width: int = Field(ge=1, description="Width in pixels, upright (after EXIF orientation).")
    height: int = Field(ge=1, description="Height in pixels, upright (after EXIF orientation).")
    format: str | None = Field(description="Container format (JPEG, PNG, WEBP, BMP, GIF, TIFF).")
    bytes: int = Field(ge=1, description="Size of the stored file in bytes.")
    expires_at: str = Field(description="When the image leaves the store unless it is used again (UTC, ISO 8601); every use renews it.")
    ttl_s: float = Field(description="Seconds an image is kept after its last use (setting `image_store_ttl_s`).")


class BatchItem(BaseModel):
    position: int = Field(description="0-based position of the part in the request.")
    filename: str | None = Field(None, description="The part's file name, reduced to a safe base name.")
    ok: bool
    image_id: str | None = None
    predictions: list[PredictionItem] | None = None
    error: Problem | None = Field(None, description="Why this image failed (the others are unaffected).")


class BatchResponse(BaseModel):
    model: str
    device: str
    count: int
    results: list[BatchItem]
    timing_ms: float


# --------------------------------------------------------------------------- activations


class ChannelStats(BaseModel):
    index: int = Field(description="Channel index within the layer part.")
    mean: float
    max: float
    min: float
    std: float
    zero_fraction: float = Field(ge=0, le=1, description="Share of values that are exactly zero.")
    nonpositive_fraction: float = Field(ge=0, le=1, description="Share of values <= 0 (what a following ReLU would zero).")
    score: float | None = Field(None, description="The sort key when channels were chosen by `top` (mean, max or attribution).")
    png: str = Field(description="The channel's map as a base64 PNG tile.")


class ActivationsResponse(BaseModel):
    image_id: str
    model: str
    layer: str
    part: str
    shape: list[int] = Field(description="[C, H, W] of the whole layer part.")
    selection: Literal["channels", "top"]
    sort: str | None = None
    target: int | None = Field(None, description="Class the attribution sort used.")
    normalize: Literal["channel", "layer"]
    colormap: str
    value_range: list[float] = Field(description="[min, max] of the whole layer part.")
    tile_px: int
    cached: bool
    channels: list[ChannelStats]
    timing_ms: float


class Contribution(BaseModel):
    channel: int = Field(description="Depthwise channel index i.")
    weight: float = Field(description="1x1 weight W[channel, i].")
    energy: float = Field(description="Sum of squares of the contribution map (the ranking key).")
    min: float
    max: float
    png: str = Field(description="Map of W[channel, i] * depthwise_i as a base64 PNG tile.")
    kernel: list[list[float]] = Field(description="The 3x3 depthwise kernel of channel i (the spatial filter that made depthwise_i).")


class MapSummary(BaseModel):
    min: float
    max: float
    png: str


class DecompositionResponse(BaseModel):
    image_id: str
    model: str
    layer: str
    channel: int
    top: int
    shape: list[int] = Field(description="[H, W] of every map.")
    weights: list[float] = Field(description="The 1x1 weights W[channel, :] over all depthwise channels.")
    contributions: list[Contribution] = Field(description="The top contributions, strongest first.")
    rest: MapSummary = Field(description="Sum of the contributions outside the top.")
    total: MapSummary = Field(description="Sum of all contributions.")
    pointwise: MapSummary = Field(description="The pointwise output channel as the network computed it.")
    max_abs_error: float = Field(description="max |total - pointwise|: the sum equals the pointwise output.")
    colormap: str
    cached: bool
    timing_ms: float


# --------------------------------------------------------------------------- attributions


class MethodParam(BaseModel):
    name: str
    kind: str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: list[Any] | None = None
    description: str = ""


class MethodInfo(BaseModel):
    name: str
    description: str
    layer_method: bool = Field(description="Whether the method attributes to a layer (needs `layer` and `part`).")
    costly: bool
    params: list[MethodParam]


class MethodList(BaseModel):
    methods: list[MethodInfo]


class ChannelScore(BaseModel):
    channel: int
    score: float | None


class AttributionResponse(BaseModel):
    image_id: str
    model: str
    method: str
    target: int = Field(description="Class whose logit was attributed.")
    target_label: str
    target_source: Literal["predicted", "requested"]
    predicted: int = Field(description="The model's predicted class for this image.")
    probability: float | None = Field(None, description="Softmax probability of the target class.")
    layer: str | None = None
    part: str | None = None
    params: dict[str, Any] = Field(description="The method parameters used (defaults filled in).")
    precision: Literal["fp32", "bf16", "mixed"] = Field(
        description="What the method ran in (also the `X-Attribution-Precision` header): the model's decision "
        "(GET /v1/models/{id} `attribution_precision`) unless the request asked for `precision`."
    )
    shape: list[int] = Field(description="Shape of the raw attribution (format=npy returns it): [3, H, W] for input methods, [1, h, w] for layer_gradcam, [C] for channel_importance.")
    value_range: list[float | None] = Field(description="[min, max] of the heatmap.")
    quality_level: Literal["none", "auc", "full"] = Field(description="The `quality` the request asked for.")
    quality: dict[str, float | None] = Field(
        description="Quality figures: convergence_delta (integrated_gradients, deeplift), deletion_auc and insertion_auc "
        "(unless quality=none or auc_steps=0), infidelity and sensitivity_max (quality=full, on request)."
    )
    curves: dict[str, list[float | None]] = Field(
        default_factory=dict, description="Deletion / insertion curves (fractions, deletion, insertion); quality=full only."
    )
    cached: bool = Field(description="Whether the whole answer came from the server's cache (`cache` is `hit`).")
    cache: Literal["hit", "map-hit", "miss"] = Field(
        description="Also the `X-Cache` header: `hit` (the whole answer from the cache), `map-hit` (the map from the cache, "
        "only the quality figures computed), `miss` (computed)."
    )
    channel_ranking: list[ChannelScore] | None = Field(None, description="channel_importance only: channels by decreasing score (at most max_channels).")
    overlay_png: str = Field(description="Heatmap over the (preprocessed) input as a base64 PNG.")
    timing_ms: float = Field(description="Server time for this request.")
    attribution_ms: float = Field(description="Time of the attribution itself.")
    quality_ms: float = Field(description="Time of the quality figures.")
    device: str


# --------------------------------------------------------------------------- samples


class SampleInfo(BaseModel):
    id: str = Field(description="Use it in GET /v1/samples/{sample_id}.")
    kind: Literal["photo", "generated"] = Field(description="A photograph (scikit-image's) or a generated image of a class.")
    title: str
    media_type: str = Field(description="Content type of the image bytes.")
    variants: int = Field(description="How many images the sample has (`variant` 0..variants-1): 1 for a photograph.")
    credit: str | None = Field(None, description="Photographs: who took it.")
    class_index: int | None = Field(None, description="Generated samples: the true class (an index of the bundled model's classes).")
    label: str | None = Field(None, description="Generated samples: the true class's name.")


class SampleList(BaseModel):
    samples: list[SampleInfo]


# --------------------------------------------------------------------------- channel atlas


class VisualisationResponse(BaseModel):
    model: str
    layer: str
    part: Literal["depthwise", "pointwise"]
    channel: int
    objective: Literal["mean", "centre"] = Field(description="What was maximised: the channel's spatial mean, or its centre value.")
    objective_start: float = Field(description="The objective on the initial image (same units as the atlas's `objective`).")
    objective_final: float = Field(description="The objective on the final image.")
    steps: int
    size: int = Field(description="Side of the image in pixels.")
    seed: int
    seconds: float = Field(description="Time of the optimisation (0 work when `cached`).")
    precision: Literal["fp32", "bf16"] = Field(description="What the optimisation ran in (bf16 only where the device computes it natively).")
    device: str
    png: str = Field(description="The image as a base64 PNG.")
    cached: bool


class AtlasExampleOut(BaseModel):
    rank: int = Field(description="0 = the image with the largest objective.")
    file: str = Field(description="The image's name, relative to the atlas's folder.")
    objective: float = Field(description="The channel's spatial mean on this image.")
    max: float = Field(description="The largest value of the channel's map on this image.")
    argmax: list[int] = Field(description="[y, x] of that value in the map.")
    box: list[int] = Field(description="[top, left, bottom, right] of the receptive field of the maximum, in input pixels (exclusive bottom and right).")
    png: str | None = Field(description="The image cropped to `box`, as a base64 PNG `thumb_px` on its longer side; null when the file can no longer be read.")


class AtlasStats(BaseModel):
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    count: int = Field(description="Images scanned.")


class AtlasHistogram(BaseModel):
    counts: list[int]
    edges: list[float] = Field(description="bins + 1 edges.")
    samples: int = Field(description="How many (evenly spaced) images of the data set the histogram counts.")


class ReceptiveFieldOut(BaseModel):
    size: int = Field(description="Side of the field in input pixels.")
    jump: int = Field(description="Input pixels between neighbouring units of the map.")
    start: float = Field(description="Centre of unit 0 in input pixels.")


class AtlasEntryResponse(BaseModel):
    model: str
    layer: str
    part: Literal["depthwise", "pointwise"]
    channel: int
    objective: Literal["mean"] = Field(description="What ranks the examples: the channel's spatial mean.")
    k: int = Field(description="Examples returned.")
    kept: int = Field(description="Examples the index keeps per channel (the largest `k`).")
    images: int = Field(description="Images the atlas scanned.")
    receptive_field: ReceptiveFieldOut
    input_size: int
    examples: list[AtlasExampleOut] = Field(description="Largest objective first.")
    stats: AtlasStats = Field(description="The channel's objective over every scanned image.")
    histogram: AtlasHistogram | None = Field(description="The channel's objective over a sample of the data set; null when the index kept no sample.")
    cached: bool
    timing_ms: float


class WeightTerm(BaseModel):
    channel: int
    weight: float


class ChannelWeightsResponse(BaseModel):
    model: str
    layer: str
    part: Literal["depthwise", "pointwise"]
    channel: int
    kernel: list[list[float]] | None = Field(None, description="depthwise: the channel's 3x3 kernel.")
    used_by: list[WeightTerm] | None = Field(None, description="depthwise: the pointwise channels that weigh this channel most (|W[j, channel]|, largest first).")
    used_by_count: int | None = Field(None, description="depthwise: how many pointwise channels read it.")
    weights: list[float] | None = Field(None, description="pointwise: the 1x1 weights W[channel, :] over the depthwise channels.")
    top: list[WeightTerm] | None = Field(None, description="pointwise: the depthwise channels it weighs most (|W[channel, i]|, largest first).")
