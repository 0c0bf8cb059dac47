"""The REST API against its own OpenAPI document: the document is valid OpenAPI, and a bounded
schemathesis run with every check finds no answer that contradicts it."""

import json
import os
import subprocess
import urllib.request
from collections import Counter
from pathlib import Path

from openapi_spec_validator import validate

from conftest import start_confab

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(os.sys.executable).parent

LIMITS = ["--http-rate", "100000", "--http-burst", "100000",
          "--auth-rate-per-minute", "100000", "--auth-burst", "100000"]


def fetch(url, body=None):
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def test_the_openapi_document_is_valid_openapi(confab):
    doc = fetch(f"http://127.0.0.1:{confab['http']}/api/v1/openapi.json")
    validate(doc)
    operations = [op for item in doc["paths"].values() for op in item.values()]
    ids = Counter(op["operationId"] for op in operations)
    assert [i for i, n in ids.items() if n > 1] == []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for p in op.get("parameters", []):
                assert p["in"] != "path" or "{" + p["name"] + "}" in path, (method, path, p["name"])
            statuses = set(op["responses"])
            assert {"400", "429"} <= statuses, (method, path)
            for status, answer in op["responses"].items():
                if status[0] in "45":
                    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    public = {"/api/v1/auth/register", "/api/v1/auth/login", "/api/v1/auth/refresh", "/api/v1/auth/logout"}
    for path in public:
        assert doc["paths"][path]["post"]["security"] == [{}], path
        assert "401" not in doc["paths"][path]["post"]["responses"] or path in {"/api/v1/auth/login", "/api/v1/auth/refresh"}
    assert "401" in doc["paths"]["/api/v1/rooms"]["get"]["responses"]


def test_schemathesis_finds_nothing_that_contradicts_the_document(tmp_path):
    proc, ports = start_confab("--data-dir", str(tmp_path / "data"), *LIMITS)
    try:
        base = f"http://127.0.0.1:{ports['http']}"
        fetch(f"{base}/api/v1/auth/register", {"username": "fuzzer", "password": "correct horse"})
        token = fetch(f"{base}/api/v1/auth/login", {"username": "fuzzer", "password": "correct horse"})["access_token"]
        run = subprocess.run(
            [str(VENV_BIN / "schemathesis"), "--config-file", str(HERE / "schemathesis.toml"),
             "run", f"{base}/api/v1/openapi.json",
             "--checks", "all",
             # The stateful phase links operations by inference and reads archive-on-DELETE and
             # per-user client_id idempotency (docs/protocol.md) as failures; the stateless phases
             # cover every operation.
             "--phases", "examples,coverage,fuzzing",
             "--max-time", os.environ.get("CONFAB_SCHEMATHESIS_SECONDS", "100"),
             "--workers", "2", "--continue-on-failure",
             "-H", f"Authorization: Bearer {token}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=900,
        )
        assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
