"""A tiny local stand-in for the Hugging Face Hub API that records what a client sends (tests only, loopback only)."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self):
        self.requests: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.repos: list[dict] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code, payload):
                body = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _record(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                hub.requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
                )
                return body

            def do_GET(self):
                self._record()
                self._reply(404, {"error": "not found"})

            def do_HEAD(self):
                self._record()
                self.send_response(404)
                self.end_headers()

            def do_POST(self):
                body = self._record()
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    data = json.loads(body)
                    hub.repos.append(data)
                    name = (
                        f"{data.get('organization') or 'user'}/{data['name']}"
                        if "/" not in data["name"]
                        else data["name"]
                    )
                    return self._reply(200, {"url": f"{hub.url}/{name}", "name": name})
                if path == "/api/validate-yaml":
                    import yaml

                    content = json.loads(body)["content"]
                    try:
                        yaml.safe_load(content.split("---")[1])
                        return self._reply(200, {"errors": [], "warnings": []})
                    except yaml.YAMLError as error:
                        return self._reply(400, {"error": str(error)})
                if "/preupload/" in path:
                    files = json.loads(body)["files"]
                    return self._reply(
                        200,
                        {
                            "files": [
                                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                            ]
                        },
                    )
                if "/commit/" in path:
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item.get("key") == "file":
                            value = item["value"]
                            hub.files[value["path"]] = base64.b64decode(value["content"])
                    return self._reply(
                        200,
                        {
                            "commitUrl": f"{hub.url}/{self.path.split('/commit/')[0].removeprefix('/api/models/')}/commit/"
                            + "1" * 40,
                            "commitOid": "1" * 40,
                            "success": True,
                        },
                    )
                return self._reply(404, {"error": f"unexpected {path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
