"""docker-compose.yml and the Dockerfiles, checked without a Docker engine (CI has none).

The compose file's structure (profiles, GPU reservation, healthchecks, the UI waiting for a
healthy API, the weights volume, every API setting reachable by environment) and the
Dockerfiles' references (every COPY source exists and is not excluded by .dockerignore,
the commands they run exist in the CLI) are checked here; the images are not built.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILES = {"api": ROOT / "Dockerfile.api", "ui": ROOT / "Dockerfile.ui"}
VARIANTS = {"gpu": ("api-gpu", "ui-gpu"), "cpu": ("api-cpu", "ui-cpu")}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # merge keys (<<) resolved


def _environment(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def _health_url(service: dict) -> str:
    test = service["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] == "CMD", test  # exec form: no shell in the image is needed
    (url,) = re.findall(r"https?://[^'\" ]+", " ".join(test[1:]))
    return url


def _container_port(service: dict) -> int:
    (mapping,) = service["ports"]
    return int(str(mapping).rsplit(":", 1)[1].split("/")[0])


# ----------------------------------------------------------------------------- compose


def test_profiles_select_one_api_and_one_ui(compose):
    services = compose["services"]
    assert set(services) == {name for pair in VARIANTS.values() for name in pair}
    for profile, (api, ui) in VARIANTS.items():
        active = {name for name, s in services.items() if profile in s.get("profiles", [])}
        assert active == {api, ui}, (profile, active)
        assert services[api]["build"]["dockerfile"] == "Dockerfile.api"
        assert services[ui]["build"]["dockerfile"] == "Dockerfile.ui"
        for name in (api, ui):
            assert (ROOT / services[name]["build"]["context"] / services[name]["build"]["dockerfile"]).is_file()


def test_gpu_variant_reserves_an_nvidia_gpu_and_the_cpu_variant_none(compose):
    services = compose["services"]
    devices = services["api-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), devices
    assert str(_environment(services["api-gpu"])["XCEPTION_DEVICE"]).startswith("${XCEPTION_DEVICE:-cuda}")
    assert _environment(services["api-cpu"])["XCEPTION_DEVICE"] == "cpu"
    for name in ("api-cpu", "ui-gpu", "ui-cpu"):
        assert "devices" not in json.dumps(services[name].get("deploy", {})), name


def test_healthchecks_and_the_ui_waits_for_a_healthy_api(compose):
    services = compose["services"]
    for api, ui in VARIANTS.values():
        api_url, ui_url = _health_url(services[api]), _health_url(services[ui])
        assert api_url.endswith("/readyz") and f":{_container_port(services[api])}/" in api_url
        assert ui_url.endswith("/_stcore/health") and f":{_container_port(services[ui])}/" in ui_url
        for name in (api, ui):
            check = services[name]["healthcheck"]
            assert {"interval", "timeout", "retries", "start_period"} <= set(check), name
        assert services[ui]["depends_on"] == {api: {"condition": "service_healthy"}}
        # the UI reaches its own variant's API by service name, on the port the API listens on
        assert _environment(services[ui])["XCEPTION_UI_API_URL"] == f"http://{api}:{_container_port(services[api])}"
        assert str(_environment(services[api])["XCEPTION_PORT"]) == str(_container_port(services[api]))


def test_weights_cache_is_a_named_volume_and_every_api_setting_is_passed_by_environment(compose):
    from api.settings import Settings

    assert "xception-home" in compose["volumes"]
    for api, _ in VARIANTS.values():
        service = compose["services"][api]
        env = _environment(service)
        home = env["XCEPTION_HOME"]
        assert f"xception-home:{home}" in service["volumes"]
        missing = [f"XCEPTION_{name.upper()}" for name in Settings.model_fields if f"XCEPTION_{name.upper()}" not in env]
        assert not missing, f"add these API settings to x-api-environment in docker-compose.yml: {missing}"
        # unset in the shell -> unset in the container (a null value), so the app's default applies
        fixed = {"XCEPTION_HOST", "XCEPTION_PORT", "XCEPTION_HOME", "XCEPTION_DEVICE"}
        assert all(env[k] is None for k in env if k not in fixed), {k: v for k, v in env.items() if k not in fixed and v is not None}


# ----------------------------------------------------------------------------- Dockerfiles


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _copy_sources(args: str) -> list[str]:
    if args.startswith("["):
        parts = json.loads(args)
    else:
        parts = shlex.split(args)
    parts = [p for p in parts if not p.startswith("--")]
    return parts[:-1]


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex (Go's filepath.Match plus ``**`` for any directories)."""
    pat, out, i = pattern.strip("/"), "", 0
    while i < len(pat):
        if pat.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pat.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pat[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pat[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pat[i]), i + 1
    return re.compile(out + "$")


def _ignored(relpath: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern that matches a folder excludes what is in it."""
    parts = relpath.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern(pattern[1:] if negate else pattern)
        if any(regex.match(p) for p in prefixes):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_copies_only_files_that_exist_and_reach_the_build_context(kind):
    patterns = _dockerignore()
    copies = [args for word, args in _instructions(DOCKERFILES[kind]) if word in ("COPY", "ADD")]
    assert copies, kind
    for args in copies:
        assert "--from" not in args, "single-stage images only"
        for source in _copy_sources(args):
            assert (ROOT / source).exists(), f"{DOCKERFILES[kind].name}: COPY {source}: no such file"
            assert not _ignored(source, patterns), f"{DOCKERFILES[kind].name}: COPY {source} is excluded by .dockerignore"
            if (ROOT / source).is_dir():
                assert any((ROOT / source).rglob("*.py")), source


def test_dockerignore_keeps_secrets_and_heavy_folders_out():
    patterns = _dockerignore()
    for path in (".git/config", ".venv/bin/python", "tests/test_deploy.py", "api/__pycache__/x.pyc", "weights/x.pth", ".env"):
        assert _ignored(path, patterns), path
    for path in ("api/main.py", "xception_core/data/imagenet_classes.txt", "pyproject.toml", "README.md"):
        assert not _ignored(path, patterns), path


def _cmd(path: Path) -> list[str]:
    (args,) = [a for word, a in _instructions(path) if word == "CMD"]
    return json.loads(args)


def test_images_run_existing_cli_commands_on_the_ports_compose_expects(compose):
    from xception_demo.cli import build_parser

    parser = build_parser()
    services = compose["services"]

    api = _instructions(DOCKERFILES["api"])
    base = dict(a.split("=", 1) for w, a in api if w == "ARG" and "=" in a)["BASE_IMAGE"]
    assert re.fullmatch(r"pytorch/pytorch:2\.\d+(\.\d+)?-cuda12\.\d+-cudnn9-runtime", base), base
    env = " ".join(a for w, a in api if w == "ENV")
    assert "XCEPTION_HOST=0.0.0.0" in env and "XCEPTION_HOME=/data/xception" in env
    cmd = _cmd(DOCKERFILES["api"])
    assert cmd[0] == "xception-demo"
    assert parser.parse_args(cmd[1:]).command == "serve"
    assert [a for w, a in api if w == "EXPOSE"] == [str(_container_port(services["api-gpu"]))]

    ui = _instructions(DOCKERFILES["ui"])
    shell = _cmd(DOCKERFILES["ui"])
    assert shell[:2] == ["sh", "-c"]
    words = shlex.split(shell[2].replace("${XCEPTION_UI_PORT}", "8501").replace("${XCEPTION_UI_API_URL}", "http://api-cpu:8000"))
    assert words[:2] == ["exec", "xception-demo"]
    args = parser.parse_args(words[2:])
    assert (args.command, args.host, args.port, args.api_url) == ("ui", "0.0.0.0", 8501, "http://api-cpu:8000")
    assert [a for w, a in ui if w == "EXPOSE"] == [str(_container_port(services["ui-cpu"]))]


def test_readme_gives_the_commands():
    text = (ROOT / "README.md").read_text()
    for command in (
        "docker compose --profile gpu up",
        "docker compose --profile cpu up",
        "serve run deploy/serve_config.yaml",
        "serve deploy deploy/serve_config.yaml",
        "xception-demo export onnx --model",
        "weights download xception-imagenet --file",
    ):
        assert command in text, command
    assert "not exercised in CI" in text  # the deployment table says what CI leaves out


def _third_party_imports(path: Path, top_level_only: bool) -> set[str]:
    import ast
    import sys

    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("ui", "xception_demo", "__future__")}


def test_ui_image_has_what_the_app_and_its_command_line_import_and_no_pytorch():
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ui"]
    installed = {re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower() for requirement in extra}
    assert not installed & {"torch", "torchvision", "captum", "xception-explorer"}, installed
    # every module of the app, and what the command line imports before a command runs
    needed = set()
    for path in (ROOT / "ui").rglob("*.py"):
        needed |= _third_party_imports(path, top_level_only=False)
    for path in (ROOT / "xception_demo").glob("*.py"):
        needed |= _third_party_imports(path, top_level_only=True)
    distribution = {"PIL": "pillow"}
    assert {distribution.get(n, n).lower() for n in needed} <= installed, needed
    ui = _instructions(DOCKERFILES["ui"])
    copied = {source for word, args in ui if word == "COPY" for source in _copy_sources(args)}
    assert copied == {"pyproject.toml", "README.md", "xception_demo", "ui"}
    runs = " ".join(args for word, args in ui if word == "RUN")
    assert "torch" not in runs and "['optional-dependencies']['ui']" in runs and "--no-deps ." in runs
