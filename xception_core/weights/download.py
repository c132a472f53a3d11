"""Downloading a pretrained checkpoint (or taking a local copy of it), verifying it, and storing it.

Offline route: download the file named by the URL on any machine, then
``weights download <id> --file PATH`` (on the command line) runs exactly the
verification a download runs (sha256 prefix from the file name in the URL) on
the local file. ``import_weights`` refuses reserved ids, so this is the only way
to fill a pretrained id -- it can only ever hold the published file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from ..convert import StateDictMismatch, timm_to_ours
from .card import ModelCard
from .catalog import get_card
from .checkpoint import read_checkpoint_and_config, verified_state
from .errors import CheckpointError, DownloadError, DownloadHashMismatch, IntegrityError, UnknownModelError, remedy
from .installed import register
from .pretrained import IMAGENET_ID, PRETRAINED, manual_route, pretrained_class_names
from .store import resolve_home, sha256_file, temp_path, unlink

__all__ = ["download_weights"]

# torch.hub / timm: the sha256 prefix is the hex run after the last '-' of the file name.
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,64})\.")


def _expected_prefix(url: str) -> str | None:
    name = urllib.parse.urlparse(url).path.rsplit("/", 1)[-1]
    m = None
    for m in _HASH_IN_NAME.finditer(name):
        pass
    return m.group(1) if m else None


def _network_reason(exc: BaseException) -> str:
    if isinstance(exc, _Truncated):
        return str(exc)
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return f"host name lookup failed ({reason.strerror or reason})"
    if isinstance(reason, http.client.IncompleteRead):
        return f"truncated: the connection closed {reason.expected} bytes early"
    text = str(reason).strip() or type(reason).__name__
    return text.splitlines()[0]


class _Truncated(Exception):
    def __init__(self, received: int, expected: int) -> None:
        super().__init__(f"truncated: received {received} of {expected} bytes")


def _fetch(url: str, dest: Path, timeout: float, progress: bool) -> tuple[str, int]:
    """Stream ``url`` into ``dest``; return (sha256 hex, bytes).

    Raises OSError / HTTPException subclasses, or :class:`_Truncated` when fewer
    bytes than Content-Length arrived (http.client returns a short read silently).
    """
    h = hashlib.sha256()
    received = 0
    request = urllib.request.Request(url, headers={"User-Agent": "xception-explorer"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - scheme checked
        length_header = response.headers.get("Content-Length")
        expected = int(length_header) if length_header and length_header.isdigit() else None
        with open(dest, "wb") as out, tqdm(
            total=expected,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=url.rsplit("/", 1)[-1],
            file=sys.stderr,
            disable=not progress,
            leave=False,
        ) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                h.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    if expected is not None and received != expected:
        raise _Truncated(received, expected)
    return h.hexdigest(), received


def download_weights(
    model_id: str = IMAGENET_ID,
    home: str | os.PathLike[str] | None = None,
    url: str | None = None,
    progress: bool = True,
    timeout: float = 30,
    *,
    sha256_prefix: str | None = None,
    file: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> ModelCard:
    """Download (or take from ``file``) a pretrained checkpoint, verify it and store it.

    The expected sha256 prefix is ``sha256_prefix`` if given, else the hex run
    in the URL's file name (``name-<hex>.pth``, torch.hub's convention), else the
    one in :data:`PRETRAINED`. ``url`` overrides the published URL (mirrors,
    tests). ``file`` skips the network: the local file goes through the same
    checks (the manual route for machines without internet). An already
    available model is returned as is unless ``force``.

    The bytes are streamed into ``<home>/downloads/*.part`` with a progress bar
    on stderr and hashed while writing; the part file is always removed.
    Raises :class:`DownloadError` (HTTP errors, network failures, truncation;
    :class:`DownloadHashMismatch` for a wrong hash), :class:`IntegrityError` for a
    local file with the wrong hash, :class:`CheckpointError`.
    """
    if model_id not in PRETRAINED:
        raise UnknownModelError(f"no downloadable model {model_id!r}; downloadable ids: {', '.join(PRETRAINED)}")
    spec = PRETRAINED[model_id]
    if not force:
        existing = get_card(model_id, home)
        if existing.status == "available":
            return existing
    source_url = url or spec["url"]
    expected = (sha256_prefix or _expected_prefix(source_url) or spec["sha256_prefix"]).lower()
    part: Path | None = None
    try:
        if file is not None:
            checkpoint, digest = _verified_local_copy(model_id, Path(file), expected)
            source, where = f"{spec['url']} (verified local copy {checkpoint.name})", str(file)
        else:
            if urllib.parse.urlparse(source_url).scheme not in ("http", "https"):
                raise DownloadError(f"cannot download {source_url}: only http and https URLs are supported")
            downloads = resolve_home(home) / "downloads"
            downloads.mkdir(parents=True, exist_ok=True)
            part = temp_path(downloads, f".{model_id}-", ".part")
            digest = _verified_download(model_id, source_url, part, expected, timeout, progress)
            checkpoint, source, where = part, source_url, source_url
        state, _ = read_checkpoint_and_config(checkpoint)
        try:
            ours = timm_to_ours(state, spec["config"]) if spec["format"] == "timm" else state
        except StateDictMismatch as exc:
            raise CheckpointError(f"{where}: {exc}") from None
        card = ModelCard(
            id=model_id,
            description=spec["description"],
            config=spec["config"],
            class_names=pretrained_class_names(model_id),
            preprocess=spec["preprocess"],
            source=source,
            extra={**spec.get("extra", {}), "source_sha256": digest, "sha256_prefix": expected},
        )
        return register(card, verified_state(ours, spec["config"], where), home)
    finally:
        unlink(part)


def _verified_local_copy(model_id: str, src: Path, expected: str) -> tuple[Path, str]:
    """The manual route: ``src`` must be the published file; return it and its sha256."""
    if not src.is_file():
        raise CheckpointError(f"{src}: file not found")
    digest = sha256_file(src)
    if not digest.startswith(expected):
        raise IntegrityError(
            f"{src}: sha256 starts with {digest[:len(expected)]}, expected {expected}; "
            f"this is not the {model_id} weights file ({PRETRAINED[model_id]['url']})"
        )
    return src, digest


def _verified_download(model_id: str, url: str, part: Path, expected: str, timeout: float, progress: bool) -> str:
    """Download ``url`` into ``part`` and check its sha256 prefix; return the sha256."""
    try:
        digest, _ = _fetch(url, part, timeout, progress)
    except (OSError, http.client.HTTPException, ValueError, _Truncated) as exc:
        raise DownloadError(
            f"could not download {url} ({_network_reason(exc)})", remedy(*manual_route(model_id))
        ) from None
    if not digest.startswith(expected):
        raise DownloadHashMismatch(
            f"downloaded {url} but its sha256 starts with {digest[:len(expected)]}, expected {expected}; "
            f"the file was discarded (damaged download or wrong file)",
            remedy("try again, or ", *manual_route(model_id)),
        )
    return digest
