"""Tiny stand-ins for an engine, for the launcher tests. Standard library only.

python fake_engine.py MODE PORT [--grandchild] [--setsid-grandchild] [--ignore-term]

MODE:
  ready        serve /health, /v1/models, /version; exit 0 on SIGTERM
  never-ready  log a few lines, then serve /health 503 forever
  exit         write to stderr and exit with code 7 at once
  crashable    like ready, and GET /crash makes it exit with code 3
Options:
  --ignore-term         ignore SIGTERM (only SIGKILL ends it)
  --grandchild          spawn a grandchild in the same process group that ignores SIGTERM
  --setsid-grandchild   spawn a grandchild that escapes into its own session and ignores SIGTERM
Every pid it creates is printed as ``PID role=N`` so the tests can look for leftovers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_SLEEPER = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('sleeper up', flush=True)\nwhile True: time.sleep(3600)\n"


def _say(text: str, *, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def main() -> int:
    mode, port = sys.argv[1], int(sys.argv[2])
    opts = set(sys.argv[3:])
    _say(f"PID engine={os.getpid()}")
    if "--ignore-term" in opts:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for opt, setsid in (("--grandchild", False), ("--setsid-grandchild", True)):
        if opt in opts:
            child = subprocess.Popen(
                [sys.executable, "-c", _SLEEPER], start_new_session=setsid, stdin=subprocess.DEVNULL
            )
            _say(f"PID {opt.strip('-').replace('-', '_')}={child.pid}")
    if mode == "exit":
        _say("INFO fake engine starting")
        _say("ERROR fake engine: cannot load model 'nope' (secret-token-1234 in the message)", err=True)
        return 7

    healthy = mode != "never-ready"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _json(self, code: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._json(200 if healthy else 503, {})
            elif self.path == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
            elif self.path == "/version":
                self._json(200, {"version": "0.0.1-fake"})
            elif self.path == "/crash" and mode == "crashable":
                self._json(200, {"ok": True})
                _say("ERROR fake engine crashing on purpose", err=True)
                os._exit(3)
            else:
                self._json(404, {"error": "not found"})

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    for i in range(3):
        _say(f"INFO loading weights {i + 1}/3")
    _say(f"WARNING fake engine listening on http://127.0.0.1:{server.server_address[1]}")
    if "--ignore-term" not in opts:
        signal.signal(signal.SIGTERM, lambda s, f: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    _say("INFO fake engine shut down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
