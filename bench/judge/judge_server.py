#!/usr/bin/env python3
"""A stand-in for the guardrail judge model: a local classifier served over
the OpenAI chat-completions wire format (non-streaming), for the server's
GUARDRAIL_JUDGE=model client.

  POST /v1/chat/completions  (also /chat/completions)
       the last user message's text between "<message>\\n" and "\\n</message>"
       is classified; the answer's content is {"verdict": "attack"} or
       {"verdict": "benign"}
  GET  /health               {"status": "ok", ...}
  GET  /v1/models            the one model

The classifier is trained on the tuning split of the issue-17 evaluation set
(model.py), or loaded from the file train.py saved when it matches the data.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import common
import model

MODEL_NAME = "eloquent-judge-classifier"


class Judge:
    def __init__(self, bundle: dict):
        self.bundle = bundle
        self.lock = threading.Lock()
        self.served = 0

    def verdict(self, text: str) -> tuple[str, float]:
        with self.lock:  # modest CPU: one classification at a time
            score = float(model.score(self.bundle, [text])[0])
            self.served += 1
        return ("attack" if score >= self.bundle["threshold"] else "benign"), score


def completion(verdict: str, requested_model: str, prompt_chars: int) -> dict:
    content = json.dumps({"verdict": verdict})
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": requested_model or MODEL_NAME,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        # Not tokens: characters / 4, so clients that read usage get numbers.
        "usage": {
            "prompt_tokens": prompt_chars // 4,
            "completion_tokens": 5,
            "total_tokens": prompt_chars // 4 + 5,
        },
    }


def make_handler(judge: Judge, api_key: str | None, quiet: bool):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the Rust client pools connections
        disable_nagle_algorithm = True  # headers and body are written apart: no 40 ms delayed-ACK stall
        server_version = "eloquent-judge/1"

        def log_message(self, fmt, *args):
            if not quiet:
                sys.stderr.write("%s - %s\n" % (self.address_string(), fmt % args))

        def send_json(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
            self.send_json(status, {"error": {"message": message, "type": kind, "param": None, "code": None}})

        def do_GET(self):
            path = self.path.split("?")[0].rstrip("/")
            if path in ("/health", "/v1/health"):
                self.send_json(
                    200,
                    {
                        "status": "ok",
                        "model": MODEL_NAME,
                        "kind": judge.bundle["kind"],
                        "threshold": judge.bundle["threshold"],
                        "served": judge.served,
                    },
                )
            elif path in ("/v1/models", "/models"):
                self.send_json(200, {"object": "list", "data": [{"id": MODEL_NAME, "object": "model", "owned_by": "eloquent"}]})
            else:
                self.error(404, f"no route GET {path}", "not_found")

        def do_POST(self):
            path = self.path.split("?")[0].rstrip("/")
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length > 0 else b""
            if path not in ("/v1/chat/completions", "/chat/completions"):
                self.error(404, f"no route POST {path}", "not_found")
                return
            if api_key is not None and self.headers.get("Authorization") != f"Bearer {api_key}":
                self.error(401, "bad or missing API key", "authentication_error")
                return
            try:
                request = json.loads(raw)
                messages = request["messages"]
                users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
                if not users:
                    raise ValueError("no user message")
                content = users[-1].get("content")
                if isinstance(content, list):  # content parts
                    content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
                if not isinstance(content, str):
                    raise ValueError("the user message has no text content")
            except (ValueError, KeyError, TypeError) as err:
                self.error(400, f"bad chat-completions request: {err}")
                return
            if request.get("stream"):
                self.error(400, "this stand-in judge answers only non-streaming requests (stream: false)")
                return
            verdict, score = judge.verdict(common.extract_message(content))
            if not quiet:
                sys.stderr.write(f"  verdict {verdict} (score {score:.3f})\n")
            prompt_chars = sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
            self.send_json(200, completion(verdict, str(request.get("model") or ""), prompt_chars))

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--eval-dir", type=Path, default=common.DEFAULT_EVAL_DIR, help="default ~/.cache/eloquent-eval")
    parser.add_argument("--benign", type=Path, default=common.default_benign(), help="benign.txt (default: this repo's)")
    parser.add_argument("--model", type=Path, default=common.DEFAULT_MODEL, help="saved model (default ~/.cache/eloquent-judge/model.joblib)")
    parser.add_argument("--retrain", action="store_true", help="train even if the saved model matches")
    parser.add_argument("--api-key", default=None, help="require this bearer key (default: accept any)")
    parser.add_argument("--quiet", action="store_true", help="no request log")
    args = parser.parse_args()

    examples = common.load(args.eval_dir.expanduser(), args.benign)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    bundle = model.load_or_train(examples, args.model.expanduser(), retrain=args.retrain, log=log)
    judge = Judge(bundle)
    judge.verdict("warm-up")
    judge.served = 0
    server = ThreadingHTTPServer((args.host, args.port), make_handler(judge, args.api_key, args.quiet))
    server.daemon_threads = True
    url = f"http://{args.host}:{server.server_address[1]}/v1"
    print(f"judge listening on {url}  (GUARDRAIL_JUDGE=model GUARDRAIL_JUDGE_BASE_URL={url} GUARDRAIL_JUDGE_API_KEY=any)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
