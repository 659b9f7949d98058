"""A small stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1 (point `HF_ENDPOINT` at it): it creates repos,
answers the pre-upload question with "regular" (files travel inside the commit, base64), and records every commit's
files. Commits whose message is in `failing` answer 500 (with `Retry-After: 0`, so huggingface_hub's five retries take
seconds, not its default 23); `hang_s` makes every request wait that long first."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class RecordingHub:
    def __init__(self) -> None:
        self.commits: list[dict[str, Any]] = []  # {"repo", "message", "files": {path: bytes}}
        self.requests: list[str] = []
        self.failing: set[str] = set()
        self.failed: list[str] = []
        self.hang_s = 0.0
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                if status >= 500:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                hub.requests.append(f"GET {self.path}")
                self._answer(404, {"error": "not recorded"})

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hub.requests.append(f"POST {self.path}")
                time.sleep(hub.hang_s)
                if self.path.startswith("/api/validate-yaml"):
                    self._answer(200, {"errors": [], "warnings": []})
                elif self.path.startswith("/api/repos/create"):
                    asked = json.loads(body)
                    repo = f"{asked.get('organization') or 'user'}/{asked['name']}"
                    self._answer(200, {"url": f"http://127.0.0.1/{repo}", "name": repo})
                elif match := re.match(r"/api/models/(.+)/preupload/", self.path):
                    files = json.loads(body)["files"]
                    self._answer(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                 for f in files]})
                elif match := re.match(r"/api/models/(.+)/commit/", self.path):
                    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                    header = next(line["value"] for line in lines if line["key"] == "header")
                    if header["summary"] in hub.failing:
                        hub.failed.append(header["summary"])
                        self._answer(500, {"error": "recording hub: this commit fails on purpose"})
                        return
                    files = {line["value"]["path"]: base64.b64decode(line["value"]["content"])
                             for line in lines if line["key"] == "file"}
                    hub.commits.append({"repo": match.group(1), "message": header["summary"], "files": files})
                    self._answer(200, {"commitUrl": f"http://127.0.0.1/{match.group(1)}/commit/{len(hub.commits)}",
                                       "commitOid": f"{len(hub.commits):040x}"})
                else:
                    self._answer(404, {"error": f"not recorded: {self.path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
