"""Model registry, cache, import and download (xception_core.weights).

Nothing here touches the network: an autouse guard refuses name lookups of
anything but localhost, and downloads are served by a local ``http.server``.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from support import calibrate_batchnorm, photo_batch
from xception_core import weights as W
from xception_core.convert import ours_to_timm
from xception_core.model import Xception, XceptionConfig
from xception_core.transform import PreprocessConfig

TINY = XceptionConfig(
    num_classes=5,
    stem_channels=(8, 16),
    entry_channels=(16, 24, 32),
    middle_repeats=1,
    exit_channels=(40, 48, 56),
)
TINY_PRETRAINED = "tiny-pretrained"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Refuse any host name lookup but localhost: a test that would reach the internet fails."""
    real = socket.getaddrinfo

    def guarded(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise socket.gaierror(socket.EAI_NONAME, f"network disabled in tests ({host})")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights *and* BatchNorm statistics, so identity checks mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name else torch.randn(t.shape, generator=g) * 0.1)
            else:
                t.fill_(7)
    return model.eval()


@pytest.fixture
def tiny_model() -> Xception:
    return _randomise(Xception(TINY))


@pytest.fixture
def timm_file(tmp_path, tiny_model) -> Path:
    path = tmp_path / "tiny_timm.pth"
    torch.save(ours_to_timm(tiny_model.state_dict(), TINY), path)
    return path


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _ids(home: Path) -> list[str]:
    return [c.id for c in W.list_models(home)]


def _assert_nothing_registered(home: Path) -> None:
    assert _files(home) == [], f"left behind: {_files(home)}"
    assert _ids(home) == [W.BUNDLED_ID, *W.PRETRAINED]


def _x(size: int = 80, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _assert_same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    x = _x()
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


# --------------------------------------------------------------------------- round trips


def test_import_timm_layout_round_trip(home, tiny_model, timm_file):
    card = W.import_weights(timm_file, "tiny", home=home)
    assert card.status == "available"
    assert card.config == TINY
    assert card.class_names == [f"class {i}" for i in range(5)]
    assert card.source == "imported from tiny_timm.pth"
    assert card.extra["format"] == "timm"
    assert card.extra["source_sha256"] == hashlib.sha256(timm_file.read_bytes()).hexdigest()
    assert (home / "models" / "tiny" / "model.safetensors").is_file()
    assert (home / "models" / "tiny" / "card.json").is_file()
    assert card.sha256 == W.sha256_file(home / "models" / "tiny" / "model.safetensors")

    model, loaded = W.load_model("tiny", home=home)
    assert not model.training
    assert loaded.to_dict() == card.to_dict()
    _assert_same_model(model, tiny_model)
    assert _ids(home) == [W.BUNDLED_ID, *W.PRETRAINED, "tiny"]


def test_import_real_timm_legacy_xception(home, tmp_path, photos):
    """The real timm layout (paper widths, 10 classes) through the import path: identical
    tensors and logits. The BatchNorms are randomised and calibrated, so an import that
    mixed two of them up would change the logits."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = timm.create_model("legacy_xception", pretrained=False, num_classes=10)
    calibrate_batchnorm(ref, photo_batch(photos, 80), seed=3)
    path = tmp_path / "legacy.pth"
    torch.save(ref.state_dict(), path)

    card = W.import_weights(path, "legacy10", format="timm", home=home)
    assert card.config == XceptionConfig(num_classes=10)
    model, _ = W.load_model("legacy10", home=home)
    back = ours_to_timm(model.state_dict(), card.config)
    for k, v in ref.state_dict().items():
        assert torch.equal(back[k], v), k
    x = photo_batch(photos[:2], 80)
    with torch.no_grad():
        expected = ref(x)
        assert torch.equal(model(x), expected)
    assert (expected[0] - expected[1]).abs().max() > 0.1  # the logits depend on the input


def test_import_our_layout_torch_and_safetensors(home, tmp_path, tiny_model):
    from safetensors.torch import save_file

    pt = tmp_path / "ours.pt"
    torch.save({"epoch": 3, "model": tiny_model.state_dict(), "optimizer": {}}, pt)
    st = tmp_path / "ours.safetensors"
    save_file(tiny_model.state_dict(), str(st))

    for name, path in (("ours-pt", pt), ("ours-st", st)):
        card = W.import_weights(path, name, labels=list("abcde"), home=home)
        assert card.extra["format"] == "ours"
        assert card.config == TINY
        assert card.class_names == list("abcde")
        model, _ = W.load_model(name, home=home)
        _assert_same_model(model, tiny_model)


def test_cadene_style_checkpoint(home, tmp_path, tiny_model):
    """No num_batches_tracked, a DataParallel ``module.`` prefix, a {"state_dict": ...} wrapper."""
    state = ours_to_timm(tiny_model.state_dict(), TINY)
    state = {f"module.{k}": v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "cadene.pth"
    torch.save({"state_dict": state, "arch": "xception"}, path)

    W.import_weights(path, "cadene", home=home)
    model, _ = W.load_model("cadene", home=home)
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            assert int(v) == 0
        else:
            assert torch.equal(v, tiny_model.state_dict()[k]), k


def test_ablation_configs_from_our_layout(home, tmp_path):
    cfg = XceptionConfig(**{**TINY.to_dict(), "residual": False, "intermediate_activation": "elu"})
    model = _randomise(Xception(cfg))
    path = tmp_path / "ablation.pt"
    torch.save(model.state_dict(), path)
    # residual on/off is visible in the keys; the activation is not (no parameters)
    assert W.infer_config(model.state_dict()) == XceptionConfig(**{**cfg.to_dict(), "intermediate_activation": "none"})
    card = W.import_weights(path, "ablation", home=home, card=W.CardOverrides(config=cfg))
    assert card.config == cfg
    loaded, _ = W.load_model("ablation", home=home)
    _assert_same_model(loaded, model)


def test_thousand_classes_get_imagenet_names_and_labels_file(home, tmp_path):
    from xception_core.labels import imagenet_class_names

    cfg = XceptionConfig(**{**TINY.to_dict(), "num_classes": 1000})
    path = tmp_path / "k.pth"
    torch.save(ours_to_timm(Xception(cfg).state_dict(), cfg), path)
    assert W.import_weights(path, "k", home=home).class_names == imagenet_class_names()

    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"thing {i}\n" for i in range(1000)), encoding="utf-8")
    card = W.import_weights(path, "k2", labels=labels, home=home)
    assert card.class_names[999] == "thing 999"
    assert W.get_card("k2", home=home).class_names == card.class_names


# --------------------------------------------------------------------------- failures register nothing


class _Evil:
    def __reduce__(self):
        return (print, ("PWNED: code ran while loading",))


def _truncated(tmp_path, timm_file):
    data = timm_file.read_bytes()
    p = tmp_path / "truncated.pth"
    p.write_bytes(data[: len(data) // 2])
    return p, "cannot load checkpoint: it is a PyTorch zip archive that is truncated or corrupted"


def _random_bytes(tmp_path, timm_file):
    p = tmp_path / "random.pth"
    p.write_bytes(os.urandom(4096))
    return p, "cannot load checkpoint"


def _empty(tmp_path, timm_file):
    p = tmp_path / "empty.pth"
    p.write_bytes(b"")
    return p, "cannot load checkpoint: the file is empty"


def _not_found(tmp_path, timm_file):
    return tmp_path / "nope.pth", "file not found"


def _pickled_object(tmp_path, timm_file):
    p = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _Evil()}, p)
    return p, "objects other than tensors"


def _non_tensor_entry(tmp_path, timm_file):
    p = tmp_path / "numbers.pth"
    torch.save({"conv1.weight": torch.zeros(1), "lr": 0.1}, p)
    return p, "entry 'lr' is a float"


def _not_a_dict(tmp_path, timm_file):
    p = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], p)
    return p, "found list"


def _resnet(tmp_path, timm_file):
    p = tmp_path / "resnet.pth"
    torch.save(
        {
            "conv1.weight": torch.zeros(64, 3, 7, 7),
            "bn1.weight": torch.ones(64),
            "layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3),
            "fc.weight": torch.zeros(1000, 2048),
            "fc.bias": torch.zeros(1000),
        },
        p,
    )
    return p, "not an Xception checkpoint"


def _edited(tmp_path, timm_file, edit, name):
    state = torch.load(timm_file, weights_only=True)
    edit(state)
    p = tmp_path / name
    torch.save(state, p)
    return p


def _missing_key(tmp_path, timm_file):
    p = _edited(tmp_path, timm_file, lambda s: s.pop("block3.rep.4.pointwise.weight"), "missing.pth")
    return p, "missing keys: block3.rep.4.pointwise.weight"


def _unexpected_key(tmp_path, timm_file):
    p = _edited(tmp_path, timm_file, lambda s: s.__setitem__("head.extra", torch.zeros(2)), "unexpected.pth")
    return p, "unexpected keys: head.extra"


def _wrong_shape(tmp_path, timm_file):
    p = _edited(
        tmp_path, timm_file, lambda s: s.__setitem__("block2.rep.1.conv1.weight", torch.zeros(16, 1, 5, 5)), "shape.pth"
    )
    return p, "shape mismatch: entry.block3.sep1.depthwise.weight: checkpoint (16, 1, 5, 5) vs model (16, 1, 3, 3)"


def _nan(tmp_path, timm_file):
    p = _edited(tmp_path, timm_file, lambda s: s["fc.weight"].fill_(float("nan")), "nan.pth")
    return p, "NaN"


@pytest.mark.parametrize(
    "make",
    [
        _truncated,
        _random_bytes,
        _empty,
        _not_found,
        _pickled_object,
        _non_tensor_entry,
        _not_a_dict,
        _resnet,
        _missing_key,
        _unexpected_key,
        _wrong_shape,
        _nan,
    ],
)
def test_bad_checkpoints_register_nothing(home, tmp_path, timm_file, make, capfd):
    path, problem = make(tmp_path, timm_file)
    with pytest.raises(W.CheckpointError) as err:
        W.import_weights(path, "bad", home=home)
    message = str(err.value)
    assert str(path) in message and problem in message, message
    assert "\n" not in message
    assert "PWNED" not in capfd.readouterr().out
    _assert_nothing_registered(home)
    with pytest.raises(W.UnknownModelError):
        W.get_card("bad", home=home)


def test_explicit_wrong_format_is_refused(home, timm_file):
    with pytest.raises(W.CheckpointError, match="not an xception_core state dict"):
        W.import_weights(timm_file, "bad", format="ours", home=home)
    _assert_nothing_registered(home)


def test_labels_file_with_wrong_line_count(home, tmp_path, timm_file):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n", encoding="utf-8")
    with pytest.raises(W.LabelsError, match=r"found 3 class names but the model has 5 classes") as err:
        W.import_weights(timm_file, "tiny", labels=labels, home=home)
    assert str(labels) in str(err.value)
    _assert_nothing_registered(home)

    labels.write_text("a\nb\nc\nd\ne\n", encoding="utf-8")
    assert W.import_weights(timm_file, "tiny", labels=labels, home=home).class_names == list("abcde")


@pytest.mark.parametrize(
    "name",
    ["../evil", "a/b", "a\\b", "Upper", "", ".hidden", "-dash", "x" * 65, "name\n", "/abs", "xception-imagenet", W.BUNDLED_ID],
)
def test_bad_names_are_refused(home, tmp_path, timm_file, name):
    with pytest.raises(W.InvalidModelNameError) as err:
        W.import_weights(timm_file, name, home=home)
    assert "\n" not in str(err.value)
    if name in W.reserved_ids():
        assert "reserved" in str(err.value)
    _assert_nothing_registered(home)
    assert not (tmp_path / "evil").exists() and not (home / "evil").exists()


def test_existing_name_needs_overwrite(home, tmp_path, timm_file):
    W.import_weights(timm_file, "tiny", home=home)
    with pytest.raises(W.ModelExistsError, match="--overwrite"):
        W.import_weights(timm_file, "tiny", home=home)
    other = _randomise(Xception(TINY), seed=5)
    path = tmp_path / "other.pth"
    torch.save(ours_to_timm(other.state_dict(), TINY), path)
    card = W.import_weights(path, "tiny", home=home, overwrite=True)
    assert card.source == "imported from other.pth"
    model, _ = W.load_model("tiny", home=home)
    _assert_same_model(model, other)


def test_failure_while_storing_leaves_nothing(home, timm_file, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("xception_core.weights.installed.write_text_atomic", boom)
    with pytest.raises(OSError, match="disk full"):
        W.import_weights(timm_file, "tiny", home=home)
    _assert_nothing_registered(home)


def test_failed_overwrite_keeps_the_previous_version(home, timm_file, tiny_model, monkeypatch):
    W.import_weights(timm_file, "tiny", home=home)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("xception_core.weights.installed.stage_safetensors", boom)
    with pytest.raises(OSError):
        W.import_weights(timm_file, "tiny", home=home, overwrite=True)
    model, _ = W.load_model("tiny", home=home)
    _assert_same_model(model, tiny_model)
    assert sorted(p.name for p in _files(home)) == ["card.json", "model.safetensors"]


# --------------------------------------------------------------------------- registry


def test_registry_listing_and_errors(home, timm_file):
    assert W.default_model_id(home) == W.BUNDLED_ID
    cards = W.list_models(home)
    assert [c.id for c in cards] == [W.BUNDLED_ID, "xception-imagenet"]
    imagenet = cards[1]
    assert imagenet.status == "missing" and imagenet.source == W.PRETRAINED["xception-imagenet"]["url"]
    assert imagenet.config.is_paper and len(imagenet.class_names) == 1000
    assert imagenet.preprocess == PreprocessConfig()

    for name in ("zeta", "alpha", "mid.1"):
        W.import_weights(timm_file, name, home=home)
    assert _ids(home) == [W.BUNDLED_ID, "xception-imagenet", "alpha", "mid.1", "zeta"]

    with pytest.raises(W.UnknownModelError) as err:
        W.get_card("nope", home=home)
    assert isinstance(err.value, KeyError) and isinstance(err.value, W.WeightsError)
    assert str(err.value).startswith("unknown model 'nope'; valid ids: ")
    assert "alpha" in str(err.value) and "xception-imagenet" in str(err.value)
    for bad in ("../alpha", "models/alpha"):
        with pytest.raises(W.UnknownModelError):
            W.get_card(bad, home=home)


def test_missing_weights_say_how_to_get_them(home, timm_file):
    with pytest.raises(W.WeightsMissingError) as err:
        W.load_model("xception-imagenet", home=home)
    message = str(err.value)
    assert err.value.remedy.commands[0].args == ("weights", "download", "xception-imagenet")
    assert "--file" in message and "xception-43020ad28.pth" in message

    W.import_weights(timm_file, "tiny", home=home)
    (home / "models" / "tiny" / "model.safetensors").unlink()
    assert W.get_card("tiny", home=home).status == "missing"
    with pytest.raises(W.WeightsMissingError, match="`weights import FILE --name tiny --overwrite`"):
        W.load_model("tiny", home=home)


def test_corrupted_cache_file_is_detected(home, timm_file):
    W.import_weights(timm_file, "tiny", home=home)
    weights = home / "models" / "tiny" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(W.IntegrityError, match="sha256"):
        W.load_model("tiny", home=home)


def test_damaged_card_is_skipped_by_listing(home, timm_file):
    W.import_weights(timm_file, "tiny", home=home)
    W.import_weights(timm_file, "fine", home=home)
    (home / "models" / "tiny" / "card.json").write_text("{not json", encoding="utf-8")
    assert _ids(home) == [W.BUNDLED_ID, "xception-imagenet", "fine"]
    with pytest.raises(W.CardError, match="not valid JSON"):
        W.get_card("tiny", home=home)


def test_card_json_round_trip(home, timm_file):
    card = W.import_weights(timm_file, "tiny", home=home)
    stored = json.loads((home / "models" / "tiny" / "card.json").read_text())
    assert "weights_path" not in stored and "status" not in stored
    again = W.ModelCard.from_json(card.to_json(), weights_path=card.weights_path)
    assert again == card
    with pytest.raises(W.CardError, match="4 class names for 5 classes"):
        W.ModelCard.from_json(json.dumps({**stored, "class_names": list("abcd")}))


def test_xception_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XCEPTION_HOME", str(tmp_path / "h"))
    assert W.xception_home() == tmp_path / "h"
    monkeypatch.delenv("XCEPTION_HOME")
    import platformdirs

    assert W.xception_home() == Path(platformdirs.user_cache_path("xception-explorer"))


def test_read_checkpoint_unwraps_and_strips(tmp_path, tiny_model):
    state = tiny_model.state_dict()
    p = tmp_path / "compiled.pt"
    torch.save({"model_state_dict": {f"_orig_mod.{k}": v for k, v in state.items()}}, p)
    got = W.read_checkpoint(p)
    assert got.keys() == state.keys()
    # safetensors detected by content, whatever the suffix
    from safetensors.torch import save_file

    q = tmp_path / "weights.bin"
    save_file(state, str(q))
    assert W.read_checkpoint(q).keys() == state.keys()


# --------------------------------------------------------------------------- download


class _Server:
    """A local HTTP server: ``routes`` maps a path to (status, body, declared length, delay)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, int | None, float]] = {}
        self.hits: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.hits.append(self.path)
                status, body, length, delay = server.routes.get(self.path, (404, b"not found", None, 0.0))
                if delay:
                    time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture
def tiny_pretrained(monkeypatch, timm_file):
    """A small downloadable model registered as data, like xception-imagenet."""
    body = timm_file.read_bytes()
    digest = hashlib.sha256(body).hexdigest()
    monkeypatch.setitem(
        W.PRETRAINED,
        TINY_PRETRAINED,
        {
            "description": "tiny test model",
            "url": f"https://example.invalid/releases/tiny-{digest[:9]}.pth",
            "sha256_prefix": digest[:9],
            "format": "timm",
            "config": TINY,
            "preprocess": PreprocessConfig(input_size=96),
            "labels": list("vwxyz"),
        },
    )
    return body, digest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_good_file(home, server, tiny_pretrained, tiny_model, capfd):
    body, digest = tiny_pretrained
    path = f"/mirror/tiny-{digest[:9]}.pth"
    server.routes[path] = (200, body, None, 0.0)

    card = W.download_weights(TINY_PRETRAINED, home=home, url=server.url(path), progress=True)
    assert "tiny-" in capfd.readouterr().err  # the progress bar went to stderr
    assert card.status == "available" and card.source == server.url(path)
    assert card.class_names == list("vwxyz") and card.preprocess.input_size == 96
    assert card.extra["source_sha256"] == digest
    model, _ = W.load_model(TINY_PRETRAINED, home=home)
    _assert_same_model(model, tiny_model)
    assert sorted(p.name for p in _files(home)) == ["card.json", "model.safetensors"]

    # already there: no second request unless forced
    W.download_weights(TINY_PRETRAINED, home=home, url=server.url(path), progress=False)
    assert server.hits == [path]
    W.download_weights(TINY_PRETRAINED, home=home, url=server.url(path), progress=False, force=True)
    assert server.hits == [path, path]


def test_pretrained_id_cannot_be_imported(home, timm_file, tiny_pretrained):
    with pytest.raises(W.InvalidModelNameError, match=f"weights download {TINY_PRETRAINED}"):
        W.import_weights(timm_file, TINY_PRETRAINED, home=home)


def _expect_download_failure(home, exc_type, call, *fragments):
    with pytest.raises(exc_type) as err:
        call()
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message
    assert _files(home) == [], f"left behind: {_files(home)}"
    assert W.get_card(TINY_PRETRAINED, home=home).status == "missing"
    return message


MANUAL = f"then run `weights download {TINY_PRETRAINED} --file"


def test_download_wrong_hash(home, server, tiny_pretrained):
    body, digest = tiny_pretrained
    wrong = "000000000" if not digest.startswith("000000000") else "111111111"
    path = f"/x/tiny-{wrong}.pth"
    server.routes[path] = (200, body, None, 0.0)
    url = server.url(path)
    _expect_download_failure(
        home,
        W.DownloadHashMismatch,
        lambda: W.download_weights(TINY_PRETRAINED, home=home, url=url, progress=False),
        url,
        f"starts with {digest[:9]}, expected {wrong}",
        MANUAL,
    )
    # the explicit prefix argument wins over the file name
    card = W.download_weights(TINY_PRETRAINED, home=home, url=url, progress=False, sha256_prefix=digest[:12])
    assert card.status == "available"


def test_download_truncated(home, server, tiny_pretrained):
    body, digest = tiny_pretrained
    path = f"/x/tiny-{digest[:9]}.pth"
    server.routes[path] = (200, body[: len(body) // 3], len(body), 0.0)
    url = server.url(path)
    _expect_download_failure(
        home,
        W.DownloadError,
        lambda: W.download_weights(TINY_PRETRAINED, home=home, url=url, progress=False),
        url,
        f"truncated: received {len(body) // 3} of {len(body)} bytes",
        MANUAL,
    )


def test_download_404(home, server, tiny_pretrained):
    url = server.url("/missing/tiny-abcdef123.pth")
    _expect_download_failure(
        home,
        W.DownloadError,
        lambda: W.download_weights(TINY_PRETRAINED, home=home, url=url, progress=False),
        url,
        "HTTP 404",
        MANUAL,
    )


def test_download_connection_refused(home, tiny_pretrained):
    url = f"http://127.0.0.1:{_free_port()}/tiny-abcdef123.pth"
    _expect_download_failure(
        home,
        W.DownloadError,
        lambda: W.download_weights(TINY_PRETRAINED, home=home, url=url, progress=False, timeout=5),
        url,
        "connection refused",
        MANUAL,
    )


def test_download_timeout(home, server, tiny_pretrained):
    body, digest = tiny_pretrained
    path = f"/slow/tiny-{digest[:9]}.pth"
    server.routes[path] = (200, body, None, 1.5)
    url = server.url(path)
    _expect_download_failure(
        home,
        W.DownloadError,
        lambda: W.download_weights(TINY_PRETRAINED, home=home, url=url, progress=False, timeout=0.3),
        url,
        "timed out",
    )


def test_download_served_garbage_with_the_right_hash(home, server, tiny_pretrained):
    """A file whose hash matches the URL but which is no checkpoint: CheckpointError, nothing kept."""
    junk = b"<html>rate limited</html>"
    prefix = hashlib.sha256(junk).hexdigest()[:9]
    path = f"/x/tiny-{prefix}.pth"
    server.routes[path] = (200, junk, None, 0.0)
    _expect_download_failure(
        home,
        W.CheckpointError,
        lambda: W.download_weights(TINY_PRETRAINED, home=home, url=server.url(path), progress=False),
        "cannot load checkpoint",
    )


def test_download_offline_default_url(home):
    """The published URL with no network: the message names the URL and the manual route."""
    url = W.PRETRAINED["xception-imagenet"]["url"]
    with pytest.raises(W.DownloadError) as err:
        W.download_weights(home=home, progress=False)
    message = str(err.value)
    assert url in message and "host name lookup failed" in message
    assert "`weights download xception-imagenet --file PATH/xception-43020ad28.pth`" in message
    assert _files(home) == []


def test_manual_route_with_local_file(home, tmp_path, tiny_pretrained, tiny_model):
    body, digest = tiny_pretrained
    good = tmp_path / f"tiny-{digest[:9]}.pth"
    good.write_bytes(body)
    bad = tmp_path / "other.pth"
    bad.write_bytes(body + b"\0")

    with pytest.raises(W.IntegrityError, match=f"expected {digest[:9]}"):
        W.download_weights(TINY_PRETRAINED, home=home, file=bad, progress=False)
    assert _files(home) == []

    card = W.download_weights(TINY_PRETRAINED, home=home, file=good, progress=False)
    assert card.status == "available" and good.name in card.source
    model, _ = W.load_model(TINY_PRETRAINED, home=home)
    _assert_same_model(model, tiny_model)


def test_download_unknown_id(home):
    with pytest.raises(W.UnknownModelError, match="downloadable ids: xception-imagenet"):
        W.download_weights("resnet50", home=home)


@pytest.mark.slow
def test_download_full_imagenet_layout(home, tmp_path, server, photos):
    """The real thing at full size: a 1000-class timm legacy_xception file served locally."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = timm.create_model("legacy_xception", pretrained=False)
    calibrate_batchnorm(ref, photo_batch(photos, 80), seed=4)
    buf = io.BytesIO()
    torch.save(ref.state_dict(), buf)
    body = buf.getvalue()
    prefix = hashlib.sha256(body).hexdigest()[:9]
    path = f"/v0.1-cadene/xception-{prefix}.pth"
    server.routes[path] = (200, body, None, 0.0)

    card = W.download_weights(home=home, url=server.url(path), progress=False)
    assert card.id == "xception-imagenet" and card.config.is_paper
    assert card.class_names[0] == "tench"
    assert W.default_model_id(home) == "xception-imagenet"
    model, _ = W.load_model("xception-imagenet", home=home)
    x = photo_batch(photos[:2], 80)
    with torch.no_grad():
        expected = ref(x)
        assert torch.equal(model(x), expected)
    assert (expected[0] - expected[1]).abs().max() > 0.1  # the logits depend on the input
    assert not any(p.suffix == ".part" for p in _files(home))


# --------------------------------------------------------------------------- bundled model


def test_bundled_model(monkeypatch, tmp_path, tiny_model, home):
    bundled = tmp_path / "bundled"
    monkeypatch.setattr("xception_core.weights.bundled.bundled_dir", lambda: bundled)
    missing = W.bundled_card()
    assert missing.status == "missing" and missing.id == W.BUNDLED_ID
    with pytest.raises(W.WeightsMissingError, match="reinstall"):
        W.load_model(W.BUNDLED_ID, home=home)

    written = W.export_bundled(
        tiny_model, class_names=list("abcde"), description="tiny", extra={"test_top1": 0.9}, directory=bundled
    )
    assert sorted(p.name for p in bundled.iterdir()) == [f"{W.BUNDLED_ID}.json", f"{W.BUNDLED_ID}.safetensors"]
    card = W.bundled_card()
    assert card.status == "available" and card.sha256 == written.sha256 and card.source == "bundled"
    assert W.list_models(home)[0].status == "available"
    model, loaded = W.load_model(W.BUNDLED_ID, home=home)
    assert loaded.extra == {"test_top1": 0.9}
    _assert_same_model(model, tiny_model)

    weights = bundled / f"{W.BUNDLED_ID}.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(W.IntegrityError) as err:
        W.load_model(W.BUNDLED_ID, home=home)
    assert "sha256" in str(err.value) and "reinstall" in str(err.value)


def test_real_bundled_card_is_consistent_when_present():
    """Whatever ships in the package: either missing, or a card whose sha256 matches its file."""
    card = W.bundled_card()
    if card.status == "missing":
        pytest.skip("bundled model not built yet")
    assert card.sha256 == W.sha256_file(card.weights_path)
