"""``schemathesis run`` -- the command a user would type -- against the real server on a socket,
with every check but ``positive_data_acceptance`` (random bytes are not images, and which layer
names and class indices a model has is not in a schema), with and without an API key.

It fails when the schema promises what the server does not keep or leaves out what it enforces:
security declared without a key (the server then accepts requests without it), an upload bound or
an enum that the server does not refuse beyond, a documented status, header or body that does not
match the answer. Generation is seeded and deterministic, so a failure repeats.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from apifixtures import *  # noqa: F401,F403 -- the shared fixtures
from apihelpers import make_app, serve

pytestmark = pytest.mark.slow

#: enough to reach every parameter's boundaries (the coverage phase does not depend on it)
MAX_EXAMPLES = 10


def schemathesis_run(url: str, api_key: str | None, cwd) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--max-examples", str(MAX_EXAMPLES), "--seed", "1", "--generation-deterministic",
        "--workers", "1", "--request-timeout", "120", "--no-color",
    ]
    if api_key:
        command += ["--header", f"X-API-Key: {api_key}"]
    # cwd: the run keeps its example database there, not in the repository
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("api_key", [None, "schema-test-key"], ids=["no-key", "key"])
def test_schemathesis_finds_nothing(tiny_model, api_key, tmp_path):
    app = make_app(tiny_model, api_key=api_key, attribution_timeout_s=120.0)
    operations = sum(len(item) for item in app.openapi()["paths"].values())
    with serve(app) as url:
        result = schemathesis_run(url, api_key, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-12000:]
    assert f"Tested: {operations}" in output, output[-3000:]  # every operation ran
