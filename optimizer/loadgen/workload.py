"""The fixed, seeded request set. Pure.

Request ``i`` depends only on (workload, seed, i), so every trial sends exactly the same
requests and any count or duration can be served. Prompts are token ids by default: their
length is exact without a tokenizer on the client, and ``ignore_eos`` makes output lengths exact.
A JSONL dataset (``{"prompt": ..., "max_tokens": ...}`` per line) or a ShareGPT-style file
(``{"conversations": [{"from": "human", "value": ...}, ...]}``) replaces the synthetic prompts.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from optimizer.config import ModelConfig, WorkloadConfig
from optimizer.errors import ConfigError
from optimizer.loadgen.records import RequestSpec

__all__ = ["RequestSet", "load_dataset"]

_WORDS = ("alpha bravo delta echo golf hotel india kilo lima mike oscar papa romeo sierra tango "
          "victor whiskey yankee zulu amber basil cedar dune ember fern grove harbor island jade").split()


def _spread(rng: random.Random, mean: int, spread: float) -> int:
    if spread <= 0:
        return mean
    return max(1, int(round(mean * rng.uniform(1 - spread, 1 + spread))))


def load_dataset(path: str) -> list[tuple[Any, Optional[int]]]:
    """(prompt, max_tokens or None) pairs from a JSONL or ShareGPT-style JSON file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"workload.dataset={path!r}: no such file. Give a JSONL file with one "
                          f'{{"prompt": ..., "max_tokens": ...}} per line, or a ShareGPT JSON file')
    text = p.read_text()
    rows: list[tuple[Any, Optional[int]]] = []
    if text.lstrip().startswith("["):
        for conv in json.loads(text):
            turns = conv.get("conversations") or conv.get("messages") or []
            human = next((t.get("value") or t.get("content") for t in turns
                          if t.get("from", t.get("role")) in ("human", "user")), None)
            if human:
                rows.append((human, None))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                rows.append((obj["prompt"], obj.get("max_tokens")))
            except (ValueError, KeyError) as exc:
                raise ConfigError(f"workload.dataset={path!r} line {n}: {exc!r}; each line must be "
                                  f'{{"prompt": ..., "max_tokens": ...}}') from exc
    if not rows:
        raise ConfigError(f"workload.dataset={path!r}: no prompts found")
    return rows


@dataclass(frozen=True)
class RequestSet:
    workload: WorkloadConfig
    token_low: int
    token_high: int
    dataset: tuple[tuple[Any, Optional[int]], ...] = ()

    @classmethod
    def build(cls, workload: WorkloadConfig, model: ModelConfig) -> "RequestSet":
        vocab = model.vocab_size or 32000
        low = min(model.prompt_token_low, max(0, vocab // 4))
        high = model.prompt_token_high or max(low + 1, vocab - 300)
        rows = tuple(load_dataset(workload.dataset)) if workload.dataset else ()
        return cls(workload, low, high, rows)

    def _tokens(self, rng: random.Random, n: int) -> list[int]:
        return [rng.randrange(self.token_low, self.token_high) for _ in range(n)]

    def _prefix(self, k: int) -> list[int]:
        return self._tokens(random.Random(f"{self.workload.seed}-prefix-{k}"), self.workload.shared_prefix_tokens)

    def spec(self, i: int, *, warmup: bool = False) -> RequestSpec:
        w = self.workload
        rng = random.Random(f"{w.seed}-{'w' if warmup else 'm'}-{i}")
        out = _spread(rng, w.output_tokens, w.output_tokens_spread)
        if self.dataset:
            prompt, max_tokens = self.dataset[i % len(self.dataset)]
            return RequestSpec(i, self._as_endpoint(prompt), int(max_tokens or out))
        n = _spread(rng, w.prompt_tokens, w.prompt_tokens_spread)
        if w.shared_prefix_tokens:
            ids = self._prefix(i % max(1, w.num_prefixes)) + self._tokens(rng, max(1, n - w.shared_prefix_tokens))
        else:
            ids = self._tokens(rng, n)
        if w.endpoint == "chat":
            text = " ".join(_WORDS[t % len(_WORDS)] for t in ids)  # about one token per word
            return RequestSpec(i, [{"role": "user", "content": text}], out)
        return RequestSpec(i, ids, out, prompt_tokens=len(ids))

    def _as_endpoint(self, prompt: Any) -> Any:
        if self.workload.endpoint == "chat" and isinstance(prompt, str):
            return [{"role": "user", "content": prompt}]
        return prompt
