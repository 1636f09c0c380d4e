"""A stand-in for a vLLM server process, for lifecycle tests that need no model.

    python toy_server.py PORT [--grandchild] [--crash-after S] [--never-ready] [--ignore-term] [--log-line TEXT]

Serves GET /health (200) on 127.0.0.1:PORT. --grandchild forks a child that holds a socket open
(like vLLM's EngineCore, which outlives a killed API server). --crash-after exits with code 1
after printing --log-line (e.g. a vLLM error message). --never-ready binds nothing.
--ignore-term makes the process (and its grandchild) ignore SIGTERM, so only SIGKILL ends it.
"""

import argparse
import http.server
import os
import signal
import socket
import sys
import threading
import time


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--grandchild", action="store_true")
    ap.add_argument("--crash-after", type=float, default=0)
    ap.add_argument("--never-ready", action="store_true")
    ap.add_argument("--ignore-term", action="store_true")
    ap.add_argument("--log-line", default="")
    ap.add_argument("--print-env", action="append", default=[], help="print NAME=value of these variables")
    a = ap.parse_args()
    for name in a.print_env:
        print(f"ENV {name}={os.environ.get(name, '<unset>')}", flush=True)
    if a.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if a.grandchild and os.fork() == 0:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        print(f"GRANDCHILD {os.getpid()}", flush=True)
        while True:
            time.sleep(1)
    print(f"SERVER {os.getpid()}", flush=True)
    if a.crash_after:
        time.sleep(a.crash_after)
        print(a.log_line, flush=True)
        sys.exit(1)
    if a.never_ready:
        while True:
            time.sleep(1)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", a.port), _Health)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
