"""Generate ``data/quality-v2.json`` and its CI-sized subset ``data/quality-v2-ci.json`` (run once;
the files are the release and are never edited).

quality-v2 keeps quality-v1's 30 passages and 8 prompts (written for this project, CC0) and adds,
generated here from a fixed seed (so CC0 as well):

- two long passages (~3,000 tokens each) whose later half can only be predicted by reading far
  back in the KV cache: a ledger of invented deliveries restated in another order, and quality-v1's
  passages followed by a repeat of their beginning;
- 64 tasks with exactly checkable one-line answers, 16 each of arithmetic (two-digit addition),
  copy (a word list), format (a word in capitals) and lookup (a value from a small table), each a
  few-shot completion prompt.

quality-v2-ci (:func:`build_ci`) is quality-v2 cut by a fixed rule, no item edited: both long
passages (where a KV-cache dtype change shows), every fourth of the 30 short passages (8), the first
two prompts of each kind (4: copy and open) and the first four tasks of each kind (16). It is for
short runs such as CI (a probe ~40 % shorter: the long passages are most of its cost); its verdicts
are coarser: fewer positions, and 16 tasks, so McNemar's test flags only a collapse.

``python -m optimizer.quality._make_v2`` prints quality-v2's JSON, ``... _make_v2 ci`` quality-v2-ci's;
``tests/unit`` checks the shipped files equal them.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

_WORDS = ("amber anchor apple arrow basket beacon birch bridge candle canyon carpet cedar chalk cloud "
          "comet copper cotton crystal desert dolphin engine feather fern forest garden glacier harbor "
          "hazel island ivory jacket kettle ladder lantern lemon marble meadow mirror mountain needle "
          "orchard paper pepper pillow planet pocket quartz rabbit ribbon river saddle shadow silver "
          "spider spring stone sugar summer thunder timber tulip valley velvet violin walnut willow "
          "window winter yellow").split()
_FIRST = "Tamsin Orlow Bertil Ines Kasimir Odile Ravi Solveig Ugo Wanda Yannick Zora Mateo Liesel Anouk Pim".split()
_LAST = "Varga Holm Achterberg Quispe Lindqvist Moreau Okafor Petrakis Sandoval Tran Umber Wexley".split()
_GOODS = ("crates of copper wire", "barrels of lamp oil", "sacks of rye flour", "bolts of blue linen",
          "boxes of glass beads", "coils of hemp rope", "jars of pine resin", "bales of raw wool",
          "cases of tin plates", "bundles of cedar shingles")
_PLACES = "Brackwater Eastmere Fallowby Greystoke Hollin Kettering Lowgate Marrow Northwick Ostley Pennock Rilby".split()


def _ledger(rng: random.Random, n: int = 64) -> str:
    rows = []
    for i in range(n):
        who = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        rows.append((i + 1, who, rng.randint(11, 98), rng.choice(_GOODS), rng.choice(_PLACES), rng.randint(2, 29)))
    head = ["The depot ledger for the spring season lists every delivery in the order it arrived."]
    for i, who, k, goods, place, day in rows:
        head.append(f"Entry {i}: on day {day}, {who} delivered {k} {goods} to the depot at {place}.")
    order = rows[:]
    rng.shuffle(order)
    tail = ["", "At the end of the season the clerk copied each delivery again, sorted by the courier's name."]
    for i, who, k, goods, place, day in sorted(order, key=lambda r: r[1]):
        tail.append(f"{who} delivered {k} {goods} to {place} on day {day} (entry {i}).")
    return "\n".join(head + tail)


def _recall(v1_texts: list[str]) -> str:
    body = "\n\n".join(v1_texts)
    return body + "\n\nThe first passages again, word for word:\n\n" + "\n\n".join(v1_texts[:6])


def _tasks(rng: random.Random, per_kind: int = 16) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for n in range(per_kind):
        shots = [(rng.randint(10, 89), rng.randint(10, 89)) for _ in range(3)]
        a, b = rng.randint(10, 89), rng.randint(10, 89)
        prompt = "".join(f"{x} + {y} = {x + y}\n" for x, y in shots) + f"{a} + {b} ="
        out.append({"id": f"arith-{n:02d}", "kind": "arithmetic", "prompt": prompt, "answer": str(a + b)})
    for n in range(per_kind):
        lists = [" ".join(rng.sample(_WORDS, 4)) for _ in range(2)]
        query = " ".join(rng.sample(_WORDS, 5))
        prompt = ("Copy the words exactly.\n" + "".join(f"Input: {s}\nOutput: {s}\n" for s in lists)
                  + f"Input: {query}\nOutput:")
        out.append({"id": f"copy-{n:02d}", "kind": "copy", "prompt": prompt, "answer": query})
    for n in range(per_kind):
        words = rng.sample(_WORDS, 3)
        query = rng.choice([w for w in _WORDS if w not in words])
        prompt = ("Write the word in capital letters.\n" + "".join(f"Word: {w}\nCapitals: {w.upper()}\n" for w in words)
                  + f"Word: {query}\nCapitals:")
        out.append({"id": f"format-{n:02d}", "kind": "format", "prompt": prompt, "answer": query.upper()})
    for n in range(per_kind):
        names = rng.sample(_FIRST, 6)
        codes = [rng.randint(100, 999) for _ in names]
        table = "".join(f"{who}: {code}\n" for who, code in zip(names, codes))
        ask = rng.sample(range(6), 3)
        said = "".join(f"The code of {names[i]} is {codes[i]}.\n" for i in ask[:2])
        q = ask[2]
        prompt = "Codes:\n" + table + "\n" + said + f"The code of {names[q]} is"
        out.append({"id": f"lookup-{n:02d}", "kind": "lookup", "prompt": prompt, "answer": str(codes[q])})
    return out


def build() -> dict[str, Any]:
    v1 = json.loads((Path(__file__).with_name("data") / "quality-v1.json").read_text())
    rng = random.Random(20261206)
    texts = list(v1["texts"]) + [
        {"id": "long-ledger", "text": _ledger(rng)},
        {"id": "long-recall", "text": _recall([t["text"] for t in v1["texts"]])},
    ]
    return {
        "name": "quality-v2", "version": 2,
        "license": "Written or generated (seeded, optimizer/quality/_make_v2.py) for this project; public domain "
                   "(CC0-1.0).",
        "about": "quality-v1's passages and prompts, two long passages (~3k tokens) whose second half is predicted "
                 "only by reading far back in the KV cache, and 64 tasks with exactly checkable one-line answers "
                 "(arithmetic, copy, format, lookup).",
        "texts": texts, "prompts": v1["prompts"], "tasks": _tasks(rng)}


def _first_of_each_kind(items: list[dict[str, str]], n: int) -> list[dict[str, str]]:
    kinds = dict.fromkeys(item["kind"] for item in items)  # in order of first appearance
    return [item for kind in kinds for item in [i for i in items if i["kind"] == kind][:n]]


def build_ci() -> dict[str, Any]:
    v2 = build()
    short = [t for t in v2["texts"] if not t["id"].startswith("long-")]
    long = [t for t in v2["texts"] if t["id"].startswith("long-")]
    return {
        "name": "quality-v2-ci", "version": 2, "license": v2["license"],
        "about": "A CI-sized subset of quality-v2 (optimizer/quality/_make_v2.py, build_ci; no item edited): both "
                 "long passages, every fourth short passage (8), the first two prompts of each kind (4) and the "
                 "first four tasks of each kind (16). For short runs; its verdicts are coarser than quality-v2's.",
        "texts": short[::4] + long, "prompts": _first_of_each_kind(v2["prompts"], 2),
        "tasks": _first_of_each_kind(v2["tasks"], 4)}


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=False) + "\n"


def render_ci() -> str:
    return json.dumps(build_ci(), indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(render_ci() if sys.argv[1:] == ["ci"] else render(), end="")
