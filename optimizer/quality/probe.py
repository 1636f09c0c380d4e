"""The quality probe: the thin HTTP shell around :mod:`optimizer.quality.scoring`.

Against a live OpenAI-compatible vLLM server, :func:`run_probe` sends, one request at a time
(one request in flight keeps the batch shape, and so the arithmetic, the same whatever the
config's scheduler limits):

(a) each reference text to ``/v1/completions`` with ``prompt_logprobs=0`` (the log-probability of
    every prompt token given the ones before it; vLLM's extension) and ``return_token_ids``,
    ``max_tokens=1``: teacher-forced log-likelihood -> perplexity;
(b) each prompt with ``temperature=0``, ``max_tokens`` fixed, ``return_token_ids``: the greedy
    token sequence, compared with the reference's by :func:`~optimizer.quality.scoring.compare`.

Each part is timed (``time.perf_counter``). Any failure (HTTP error, a server without
``prompt_logprobs``) raises :class:`ProbeError` naming the request.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import httpx

from optimizer.errors import OptimizerError
from optimizer.quality.dataset import QualitySet
from optimizer.quality.scoring import Generation, QualityScores, TextScore, text_score

__all__ = ["ProbeError", "run_probe"]


class ProbeError(OptimizerError, RuntimeError):
    """The quality probe could not be measured on this server (the trial's load test stands; its
    quality is unmeasured, which :func:`~optimizer.quality.gate.grade` treats as a violation)."""


def _post(client: httpx.Client, url: str, body: dict[str, Any], what: str) -> dict[str, Any]:
    try:
        r = client.post(url, json=body)
    except httpx.HTTPError as exc:
        raise ProbeError(f"quality probe, {what}: {type(exc).__name__}: {exc} ({url})") from exc
    if r.status_code != 200:
        raise ProbeError(f"quality probe, {what}: HTTP {r.status_code} from {url}: {r.text[:300]}")
    data: dict[str, Any] = r.json()
    if not data.get("choices"):
        raise ProbeError(f"quality probe, {what}: no choices in the answer from {url}")
    return data


def _prompt_logprobs(choice: dict[str, Any], what: str) -> tuple[list[int], list[Optional[float]]]:
    ids = choice.get("prompt_token_ids")
    entries = choice.get("prompt_logprobs")
    if not ids or entries is None:
        raise ProbeError(f"quality probe, {what}: the server returned no prompt_logprobs/prompt_token_ids; "
                         f"the probe needs vLLM's OpenAI server (prompt_logprobs, return_token_ids)")
    logprobs: list[Optional[float]] = []
    for tid, entry in zip(ids, entries):
        # {token id (a JSON key, so a string): {"logprob": ..., "rank": ..., ...}}; None for the first
        hit = None if entry is None else entry.get(str(tid))
        logprobs.append(None if hit is None else float(hit["logprob"]))
    return [int(t) for t in ids], logprobs


def run_probe(base_url: str, model: str, qset: QualitySet, *, max_tokens: int,
              client: Optional[httpx.Client] = None, headers: Optional[dict[str, str]] = None,
              timeout_s: float = 300.0) -> QualityScores:
    """Measure ``qset`` on the server at ``base_url`` serving ``model``.

    Args:
        base_url: ``http://host:port`` of the server.
        model: the served model name.
        qset: the quality set (:func:`~optimizer.quality.dataset.load_set`).
        max_tokens: tokens per greedy generation (the reference must use the same).
        client: an ``httpx.Client`` to send with (tests pass a MockTransport one); one is made
            and closed otherwise.
        headers: e.g. the server's API key header.

    Raises:
        ProbeError: a request failed or the server lacks what the probe needs.
    """
    url = base_url.rstrip("/") + "/v1/completions"
    own = client is None
    http = client or httpx.Client(timeout=httpx.Timeout(timeout_s), headers=headers)
    try:
        t0 = time.perf_counter()
        texts: list[TextScore] = []
        for t in qset.texts:
            what = f"text {t.id!r}"
            data = _post(http, url, {"model": model, "prompt": t.text, "max_tokens": 1, "temperature": 0.0,
                                     "prompt_logprobs": 0, "return_token_ids": True}, what)
            ids, logprobs = _prompt_logprobs(data["choices"][0], what)
            try:
                texts.append(text_score(t.id, ids, logprobs))
            except ValueError as exc:
                raise ProbeError(f"quality probe, {what}: {exc}") from exc
        t1 = time.perf_counter()
        gens: list[Generation] = []
        for p in qset.prompts:
            what = f"prompt {p.id!r}"
            choice = _post(http, url, {"model": model, "prompt": p.prompt, "max_tokens": max_tokens,
                                       "temperature": 0.0, "return_token_ids": True}, what)["choices"][0]
            if choice.get("token_ids") is None:
                raise ProbeError(f"quality probe, {what}: the server returned no token_ids (return_token_ids)")
            gens.append(Generation(p.id, tuple(int(i) for i in choice["token_ids"]), str(choice.get("text") or ""),
                                   str(choice.get("finish_reason") or "")))
        t2 = time.perf_counter()
    finally:
        if own:
            http.close()
    return QualityScores(qset.name, qset.sha256, tuple(texts), tuple(gens), max_tokens, t1 - t0, t2 - t1)
