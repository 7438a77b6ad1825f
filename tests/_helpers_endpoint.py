"""A loopback stand-in for an OpenAI-compatible chat endpoint (vLLM, TGI, an Inference Endpoint): it
speaks the real protocol (POST /v1/chat/completions, a chat.completion object back), and judges by a rule
the tests know: the output that names Paris is better; with none or both, it says "a" (a position bias,
which asking in both orders must cancel)."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAIR = re.compile(r"## Output \(a\)\n\n(.*)\n\n## Output \(b\)\n\n(.*)\n\nAnswer with", re.S)


class JudgeEndpoint:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                outer.requests.append({"auth": self.headers.get("Authorization"), **body})
                a, b = PAIR.search(body["messages"][-1]["content"]).groups()
                pick = "b" if "Paris" in b and "Paris" not in a else "a"
                self._send(200, {
                    "id": f"chatcmpl-{len(outer.requests)}", "object": "chat.completion", "created": int(time.time()),
                    "model": body["model"], "system_fingerprint": "stand-in",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": pick}, "logprobs": None,
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
                })  # fmt: skip

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> JudgeEndpoint:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
