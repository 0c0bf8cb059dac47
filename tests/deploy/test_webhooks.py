"""Webhook signatures checked by the Standard Webhooks reference verifier (PyPI
`standardwebhooks`), not only by confab's own code: the real binary posts to a receiver
started here, and every request must verify with the webhook's secret."""

import http.server
import json
import threading
import time
import urllib.request

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from conftest import start_confab


def call(port, method, path, token=None, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    data = None
    if body is not None:
        req.add_header("Content-Type", "application/json")
        data = json.dumps(body).encode()
    with urllib.request.urlopen(req, data) as r:
        text = r.read()
        return json.loads(text) if text else None


@pytest.fixture
def receiver():
    got = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((dict(self.headers.items()), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    server.shutdown()


def test_the_reference_verifier_accepts_every_request(tmp_path, receiver):
    url, got = receiver
    proc, ports = start_confab("--data-dir", str(tmp_path), env_extra={
        "CONFAB_ADMINS": "root", "CONFAB_WEBHOOK_ALLOW_PRIVATE": "true"})
    try:
        port = ports["http"]
        call(port, "POST", "/api/v1/auth/register", body={"username": "root", "password": "correct horse"})
        token = call(port, "POST", "/api/v1/auth/login", body={"username": "root", "password": "correct horse"})["access_token"]
        hook = call(port, "POST", "/api/v1/admin/webhooks", token,
                    {"url": url, "events": ["room.created", "message.created", "message.updated"]})
        room = call(port, "POST", "/api/v1/rooms", token, {"name": "general", "kind": "public"})
        call(port, "POST", f"/api/v1/rooms/{room['id']}/messages", token, {"body": "hello, verifier"})
        call(port, "PATCH", f"/api/v1/rooms/{room['id']}/messages/1", token, {"body": "hello again"})
        deadline = time.time() + 10
        while len(got) < 3 and time.time() < deadline:
            time.sleep(0.05)
        assert len(got) == 3, got

        verifier = Webhook(hook["secret"])
        types = []
        for headers, body in got:
            payload = verifier.verify(body, headers)
            types.append(payload["type"])
            assert payload["timestamp"].endswith("Z")
        assert sorted(types) == ["message.created", "message.updated", "room.created"]

        # A body changed on the way, or another secret, does not verify.
        headers, body = got[0]
        with pytest.raises(WebhookVerificationError):
            verifier.verify(body.replace(b"\"type\"", b"\"tipe\""), headers)
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk=").verify(body, headers)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
