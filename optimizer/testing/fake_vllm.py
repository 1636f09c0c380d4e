"""A small stand-in for vLLM's OpenAI server, for tests that start many servers on 2 cores.

``python -m optimizer.testing.fake_vllm --model X --host H --port P [any other vLLM flag, ignored]``

Serves ``/health``, ``/version``, ``/metrics`` (a few of vLLM's Prometheus series), ``/v1/models``
and ``/v1/completions`` shaped like vLLM's: with ``stream`` true, SSE ``data: {...}`` chunks with
``choices[0].text``, a usage chunk when ``stream_options.include_usage``, then ``data: [DONE]``;
``max_tokens`` tokens at about 5 ms each. ``FAKE_VLLM_START_DELAY_S`` delays listening (a model
load). The first log line records the pid, ``CUDA_VISIBLE_DEVICES`` and the argv.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

TOKEN_S = 0.005
STATS = {"prompt": 0, "generation": 0, "success": 0, "running": 0}


def _response(status: str, body: bytes, ctype: str = "application/json") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def _metrics(model: str) -> bytes:
    lab = f'{{model_name="{model}"}}'
    lines = []
    for name, key in (("prompt_tokens", "prompt"), ("generation_tokens", "generation"), ("request_success", "success")):
        lines += [f"# TYPE vllm:{name} counter", f"vllm:{name}_total{lab} {float(STATS[key])}"]
    for name, value in (("num_requests_running", STATS["running"]), ("num_requests_waiting", 0),
                        ("kv_cache_usage_perc", 0.0)):
        lines += [f"# TYPE vllm:{name} gauge", f"vllm:{name}{lab} {float(value)}"]
    return ("\n".join(lines) + "\n").encode()


async def _completion(writer: asyncio.StreamWriter, req: dict, model: str) -> None:
    n = int(req.get("max_tokens") or 16)
    prompt = req.get("prompt", "")
    n_prompt = len(prompt) if isinstance(prompt, list) else len(str(prompt).split())
    head = {"id": f"cmpl-{time.monotonic_ns()}", "object": "text_completion", "created": int(time.time()),
            "model": model}
    usage = {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n}
    STATS["running"] += 1
    try:
        if not req.get("stream"):
            await asyncio.sleep(TOKEN_S * n)
            body = dict(head, choices=[{"index": 0, "text": " tok" * n, "finish_reason": "length"}], usage=usage)
            writer.write(_response("200 OK", json.dumps(body).encode()))
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")

        async def send(event: object) -> None:
            data = f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n".encode()
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            await writer.drain()

        for i in range(n):
            await asyncio.sleep(TOKEN_S)
            choice = {"index": 0, "text": " tok", "logprobs": None, "finish_reason": "length" if i == n - 1 else None}
            await send(dict(head, choices=[choice], usage=None))
        if (req.get("stream_options") or {}).get("include_usage"):
            await send(dict(head, choices=[], usage=usage))
        await send("[DONE]")
        writer.write(b"0\r\n\r\n")
    finally:
        STATS["running"] -= 1
        STATS["prompt"] += n_prompt
        STATS["generation"] += n
        STATS["success"] += 1


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, model: str,
                  names: list[str]) -> None:
    try:
        while line := await reader.readline():
            method, path, _ = line.decode().split(" ", 2)
            headers = {}
            while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                k, _, v = h.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            path = path.split("?")[0]
            if method == "POST" and path == "/v1/completions":
                await _completion(writer, json.loads(body or b"{}"), model)
            elif path == "/health":
                writer.write(_response("200 OK", b""))
            elif path == "/version":
                writer.write(_response("200 OK", b'{"version": "fake"}'))
            elif path == "/metrics":
                writer.write(_response("200 OK", _metrics(model), "text/plain; version=0.0.4"))
            elif path == "/v1/models":
                writer.write(_response("200 OK", json.dumps({"object": "list", "data": [
                    {"id": n, "object": "model", "owned_by": "fake"} for n in names]}).encode()))
            else:
                writer.write(_response("404 Not Found", b'{"error": "not found"}'))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        writer.close()


async def _serve(args: argparse.Namespace) -> None:
    await asyncio.sleep(float(os.environ.get("FAKE_VLLM_START_DELAY_S", "0")))
    names = args.served_model_name or [args.model]
    model = names[0]  # responses carry the first name, as vLLM's do; /v1/models lists them all
    server = await asyncio.start_server(lambda r, w: _handle(r, w, model, names), args.host, args.port)
    print(f"fake_vllm listening on {args.host}:{args.port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--served-model-name", nargs="*", default=[])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args, _ = p.parse_known_args()
    print(f"fake_vllm pid={os.getpid()} CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')} "
          f"argv={json.dumps(sys.argv[1:])}", flush=True)
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
