"""The fixed, seeded request set. Pure (given its files).

Request ``i`` depends only on (workload, seed, i), so every trial sends exactly the same
requests and any count or duration can be served; warm-up requests are drawn apart from the
measured ones (their own seeds, or the other end of a dataset), so a warm-up never pre-fills
the prefix cache for a measured prompt.

Prompt lengths:

- completions: prompts are token ids, so their length is exact without a tokenizer on the
  client; ``ignore_eos`` makes output lengths exact.
- chat: the API takes text, which the server tokenizes after applying the model's chat
  template. With a tokenizer (``workload.tokenizer``, else ``model.path``'s ``tokenizer.json``,
  or the ``tokenizer`` argument of :meth:`RequestSet.build`), prompts are made of words that are
  one token each and the chat template's fixed overhead is subtracted, so the server counts
  exactly ``prompt_tokens`` (checked against vLLM: benchmarks/token_accounting.py). Without
  one, each word is *about* one token and the template adds a few more: lengths are
  approximate, and the usage the server reports is the truth the summaries use.

Datasets (``workload.dataset``): a JSONL file with ``{"prompt": ..., "max_tokens": ...}`` per
line (``output_tokens`` is accepted for ``max_tokens``, as in ``vllm bench serve``'s custom
dataset; a prompt is text, token ids (completions) or chat messages (chat)), or a
ShareGPT-style JSON list of ``{"conversations": [{"from": "human", "value": ...},
{"from": "gpt", "value": ...}]}`` (or ``messages`` with ``role``/``content``): the first human
turn is the prompt and, with a tokenizer, the reply's token count is ``max_tokens`` (without one,
``workload.output_tokens``). Rows are used in file order and cycle when the run needs more. A relative dataset path is looked up from the working
directory, then from the project root (where ``conf/`` is).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from optimizer.core.errors import ConfigError
from optimizer.loadgen.records import RequestSpec
from optimizer.settings.config import ModelConfig, WorkloadConfig

__all__ = ["ChatText", "RequestSet", "load_dataset", "load_tokenizer"]

_REPO = Path(__file__).resolve().parents[2]
_WORDS = ("alpha bravo delta echo golf hotel india kilo lima mike oscar papa romeo sierra tango "
          "victor whiskey yankee zulu amber basil cedar dune ember fern grove harbor island jade").split()


def _spread(rng: random.Random, mean: int, spread: float) -> int:
    if spread <= 0:
        return mean
    return max(1, int(round(mean * rng.uniform(1 - spread, 1 + spread))))


def load_tokenizer(path: Union[str, Path]) -> Any:
    """A ``tokenizers.Tokenizer`` from a ``tokenizer.json`` file or a folder holding one."""
    p = Path(path).expanduser()
    f = p / "tokenizer.json" if p.is_dir() else p
    if not f.is_file():
        raise ConfigError(f"workload.tokenizer={str(path)!r}: no tokenizer.json there")
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(f))


def _count(tok: Any) -> Callable[[str], int]:
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)


@dataclass(frozen=True)
class ChatText:
    """How to write chat prompts of an exact token count for one tokenizer."""

    words: tuple[str, ...]  # each one token, with its leading space
    overhead: int  # tokens the chat template adds around one user message (-1: unknown)

    @classmethod
    def for_tokenizer(cls, tok: Any, tokenizer_dir: Optional[Path]) -> Optional["ChatText"]:
        count = _count(tok)
        words: list[str] = []
        for token in sorted(tok.get_vocab()):
            text = tok.decode([tok.token_to_id(token)])
            body = text[1:]
            if text.startswith(" ") and len(body) >= 2 and body.isascii() and body.isalpha() and count(text) == 1:
                words.append(text)
            if len(words) >= 1024:
                break
        if len(words) < 16:
            return None
        probe = "".join(words[:8])
        if count(probe) != 8:  # the tokenizer merges across words: no exact lengths
            return None
        return cls(tuple(words), _template_overhead(tok, tokenizer_dir, words[0]))


def _template_overhead(tok: Any, tokenizer_dir: Optional[Path], word: str) -> int:
    """Tokens the model's chat template adds to a one-message conversation, rendered the way
    vLLM does (Jinja, ``add_generation_prompt``, no special tokens added on encode)."""
    if tokenizer_dir is None:
        return -1
    try:
        conf = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
        template = conf.get("chat_template")
        if not isinstance(template, str):
            return -1
        import jinja2.sandbox

        def tok_str(v: Any) -> str:
            return v.get("content", "") if isinstance(v, dict) else (v or "")

        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        text = env.from_string(template).render(
            messages=[{"role": "user", "content": word}], add_generation_prompt=True,
            bos_token=tok_str(conf.get("bos_token")), eos_token=tok_str(conf.get("eos_token")))
    except (OSError, ValueError, ImportError, Exception):  # noqa: BLE001 - any template trouble: unknown
        return -1
    return _count(tok)(text) - 1


def load_dataset(path: str, count_tokens: Optional[Callable[[str], int]] = None) -> list[tuple[Any, Optional[int]]]:
    """(prompt, max_tokens or None) pairs from a JSONL or ShareGPT-style JSON file.

    ``count_tokens`` (text -> tokens) sizes a ShareGPT row's ``max_tokens`` from its reply."""
    p = Path(path).expanduser()
    if not p.is_absolute() and not p.is_file() and (_REPO / p).is_file():
        p = _REPO / p  # a path relative to the project, as conf/workload/*.yaml give them
    if not p.is_file():
        raise ConfigError(f"workload.dataset={path!r}: no such file. Give a JSONL file with one "
                          f'{{"prompt": ..., "max_tokens": ...}} per line, or a ShareGPT JSON file')
    text = p.read_text()
    rows: list[tuple[Any, Optional[int]]] = []
    if text.lstrip().startswith("["):
        try:
            convs = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"workload.dataset={path!r}: not valid JSON: {exc}") from None
        for conv in convs:
            if not isinstance(conv, dict):
                continue
            turns = conv.get("conversations") or conv.get("messages") or []
            idx = next((k for k, t in enumerate(turns) if t.get("from", t.get("role")) in ("human", "user")), None)
            if idx is None:
                continue
            human = turns[idx].get("value") or turns[idx].get("content")
            if not human:
                continue
            reply = next((t.get("value") or t.get("content") for t in turns[idx + 1:]
                          if t.get("from", t.get("role")) in ("gpt", "assistant")), None)
            max_tokens = max(1, count_tokens(reply)) if (reply and count_tokens) else None
            rows.append((human, max_tokens))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                mt = obj.get("max_tokens", obj.get("output_tokens"))
                rows.append((obj["prompt"], int(mt) if mt is not None else None))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ConfigError(f"workload.dataset={path!r} line {n}: {exc!r}; each line must be "
                                  f'{{"prompt": ..., "max_tokens": ...}}') from exc
    if not rows:
        raise ConfigError(f"workload.dataset={path!r}: no prompts found")
    return rows


def _check_prompt(prompt: Any, endpoint: str, where: str) -> None:
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and prompt:
        if endpoint == "completions" and all(isinstance(t, int) for t in prompt):
            return
        if endpoint == "chat" and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
            return
    allowed = "text or token ids" if endpoint == "completions" else "text or a list of {role, content} messages"
    raise ConfigError(f"{where}: a {endpoint} prompt must be {allowed}, got {str(prompt)[:80]!r}")


def _resolve_tokenizer(workload: WorkloadConfig, model: ModelConfig,
                       tokenizer: Union[str, Path, None]) -> Optional[Path]:
    if tokenizer:
        return Path(tokenizer).expanduser()
    if workload.tokenizer:
        return Path(workload.tokenizer).expanduser()
    if model.path and (Path(model.path).expanduser() / "tokenizer.json").is_file():
        return Path(model.path).expanduser()
    return None


@dataclass(frozen=True)
class RequestSet:
    workload: WorkloadConfig
    token_low: int
    token_high: int
    dataset: tuple[tuple[Any, Optional[int]], ...] = ()
    chat_text: Optional[ChatText] = None  # exact-length chat prompts (a tokenizer was given)

    @classmethod
    def build(cls, workload: WorkloadConfig, model: ModelConfig,
              tokenizer: Union[str, Path, None] = None) -> "RequestSet":
        """The request set of ``workload``. ``tokenizer``: a tokenizer.json or model folder that
        makes chat prompt lengths exact (default: ``workload.tokenizer``, then ``model.path``)."""
        vocab = model.vocab_size or 32000
        low = min(model.prompt_token_low, max(0, vocab // 4))
        high = model.prompt_token_high or max(low + 1, vocab - 300)
        tok_path = _resolve_tokenizer(workload, model, tokenizer)
        tok = load_tokenizer(tok_path) if tok_path is not None else None
        tok_dir = None if tok_path is None else (tok_path if tok_path.is_dir() else tok_path.parent)
        rows: tuple[tuple[Any, Optional[int]], ...] = ()
        if workload.dataset:
            rows = tuple(load_dataset(workload.dataset, _count(tok) if tok is not None else None))
            for k, (prompt, _) in enumerate(rows):
                _check_prompt(prompt, workload.endpoint, f"workload.dataset={workload.dataset!r} row {k + 1}")
        chat_text = ChatText.for_tokenizer(tok, tok_dir) if (tok is not None and workload.endpoint == "chat") else None
        return cls(workload, low, high, rows, chat_text)

    @property
    def exact_prompt_lengths(self) -> bool:
        """Whether the server will count exactly the synthetic prompt lengths asked for."""
        if self.dataset:
            return False
        return self.workload.endpoint == "completions" or (self.chat_text is not None and self.chat_text.overhead >= 0)

    def _tokens(self, rng: random.Random, n: int) -> list[int]:
        return rng.choices(range(self.token_low, self.token_high), k=n)  # 4x cheaper than randrange

    def _prefix(self, k: int) -> list[int]:
        return self._tokens(random.Random(f"{self.workload.seed}-prefix-{k}"), self.workload.shared_prefix_tokens)

    def spec(self, i: int, *, warmup: bool = False) -> RequestSpec:
        w = self.workload
        rng = random.Random(f"{w.seed}-{'w' if warmup else 'm'}-{i}")
        out = _spread(rng, w.output_tokens, w.output_tokens_spread)
        if self.dataset:
            k = len(self.dataset) - 1 - (i % len(self.dataset)) if warmup else i % len(self.dataset)
            prompt, max_tokens = self.dataset[k]
            n_ids = len(prompt) if isinstance(prompt, list) and prompt and isinstance(prompt[0], int) else None
            return RequestSpec(i, self._as_endpoint(prompt), int(max_tokens or out), prompt_tokens=n_ids)
        n = _spread(rng, w.prompt_tokens, w.prompt_tokens_spread)
        ct = self.chat_text
        if w.endpoint == "chat" and ct is not None and ct.overhead >= 0:
            n_content = max(1, n - ct.overhead)
        else:
            n_content = n
        if w.shared_prefix_tokens:
            ids = self._prefix(i % max(1, w.num_prefixes)) + self._tokens(rng, max(1, n_content - w.shared_prefix_tokens))
        else:
            ids = self._tokens(rng, n_content)
        if w.endpoint == "chat":
            if ct is not None:
                text = "".join(ct.words[t % len(ct.words)] for t in ids)  # one token per word, exactly
                total = len(ids) + ct.overhead if ct.overhead >= 0 else None
                return RequestSpec(i, [{"role": "user", "content": text}], out, prompt_tokens=total)
            text = " ".join(_WORDS[t % len(_WORDS)] for t in ids)  # about one token per word
            return RequestSpec(i, [{"role": "user", "content": text}], out)
        return RequestSpec(i, ids, out, prompt_tokens=len(ids))

    def _as_endpoint(self, prompt: Any) -> Any:
        if self.workload.endpoint == "chat" and isinstance(prompt, str):
            return [{"role": "user", "content": prompt}]
        return prompt
