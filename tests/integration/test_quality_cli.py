"""``python -m optimizer.quality``: the verdict on a running deployment against a reference, over
HTTP against two loopback stubs shaped like vLLM's OpenAI server (the real-server run is in
tests/e2e/test_quality_probe.py). Exit codes: 0 passed, 3 rejected, 1 unreachable, 2 bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from optimizer.commands.quality_check import EXIT_REJECTED
from optimizer.quality import load_set

pytestmark = pytest.mark.timeout(180)
ANSWERS = {t.prompt: t.answer for t in load_set("quality-v2").tasks}
REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str]) -> int:
    """The command as a user runs it (a subprocess: its logging set-up stays out of this process)."""
    r = subprocess.run([sys.executable, "-m", "optimizer.quality", *argv], cwd=REPO, capture_output=True, text=True,
                       timeout=150, env=dict(os.environ, PYTHONPATH=str(REPO)))
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    return r.returncode


def _logprobs(i: int, k: int, damaged: bool) -> dict[str, dict]:
    # the most likely next token is 1000 + i % 7 (a damaged server's: 2000 + i % 7 at every other position)
    probs = [0.6, 0.2, 0.1] + [0.1 / (k - 3)] * (k - 3)
    if damaged:
        probs = [0.3, 0.3, 0.2] + [0.2 / (k - 3)] * (k - 3)
    ids = [1000 + i % 7 + r * 10 for r in range(k)]
    if damaged and i % 2:
        ids[0] = 2000 + i % 7
    return {str(t): {"logprob": math.log(p), "rank": r + 1} for r, (t, p) in enumerate(zip(ids, probs))}


@contextmanager
def stub(damaged: bool) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def _send(self, doc: dict) -> None:
            body = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._send({"data": [{"id": "m"}]})

        def do_POST(self) -> None:
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = req["prompt"]
            ids = [hash(w) % 40000 for w in prompt.split()]
            choice: dict = {"index": 0, "finish_reason": "stop", "prompt_token_ids": ids, "token_ids": [5, 6]}
            if req.get("prompt_logprobs"):
                entries: list = [None]
                for i, t in enumerate(ids[1:]):
                    e = _logprobs(i, req["prompt_logprobs"], damaged)
                    e.setdefault(str(t), {"logprob": math.log(0.01), "rank": 50})
                    entries.append(e)
                choice["prompt_logprobs"] = entries
            answer = ANSWERS.get(prompt)
            choice["text"] = " " + ("0" if damaged else answer) if answer is not None else " text"
            if req.get("logprobs"):
                choice["logprobs"] = {"top_logprobs": [{"token_id:5": -0.1}, {"token_id:6": -0.1}]}
            self._send({"choices": [choice]})

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # the floor's batched view connects once per passage at once

    srv = Server(("127.0.0.1", 0), Handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_same_deployment_passes_and_prints_the_floor_and_both_task_accuracies(tmp_path, capsys):
    out = tmp_path / "q.json"
    with stub(False) as a, stub(False) as b:
        assert main([f"endpoint={a}", f"reference={b}", f"out={out}"]) == 0
    text = capsys.readouterr().out
    assert "verdict: pass" in text and "noise floor: mean KLD 0" in text and "tasks: endpoint 100.0 %" in text
    doc = json.loads(out.read_text())
    assert doc["passed"] and doc["mean_kld"] == 0.0 and doc["same_top1"] == 1.0 and doc["floor"]["views"] == 1
    assert doc["task_accuracy"] == doc["reference_task_accuracy"] == 1.0


def test_a_damaged_deployment_is_rejected_with_exit_3_against_a_stored_reference(tmp_path, capsys):
    ref = tmp_path / "ref.json"
    with stub(False) as good:
        assert main([f"endpoint={good}", f"save_reference={ref}"]) == 0
    with stub(True) as bad:
        assert main([f"endpoint={bad}", f"reference={ref}", f"out={tmp_path / 'q.json'}"]) == EXIT_REJECTED
    text = capsys.readouterr().out
    assert "verdict: reject: mean KLD" in text and "McNemar p" in text and "not measured (a stored reference)" in text
    doc = json.loads((tmp_path / "q.json").read_text())
    assert not doc["passed"] and doc["same_top1"] < 0.6 and doc["task_accuracy"] == 0.0 and doc["mcnemar_p"] < 1e-6


def test_bad_input_and_an_unreachable_server_have_their_exit_codes(tmp_path):
    assert main(["endpoint=http://127.0.0.1:9"]) == 2  # no reference
    assert main(["endpoint=127.0.0.1:9", "reference=x.json"]) == 2
    assert main(["endpoint=http://127.0.0.1:9", f"reference={tmp_path / 'missing.json'}"]) == 2
    assert main(["endpoint=http://127.0.0.1:9", "reference=http://127.0.0.1:9"]) == 1
