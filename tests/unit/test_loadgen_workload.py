"""The request set: seeded, exact where it claims to be, and the same in every trial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optimizer.core.errors import ConfigError
from optimizer.loadgen.workload import RequestSet, load_dataset, load_tokenizer
from optimizer.settings.config import ModelConfig, WorkloadConfig

MODEL = ModelConfig(name="tiny", vocab_size=4096, prompt_token_low=10)


def _w(**kw) -> WorkloadConfig:
    return WorkloadConfig(**{"name": "t", **kw})


def test_request_i_depends_only_on_workload_seed_and_index():
    a = RequestSet.build(_w(prompt_tokens_spread=0.5, output_tokens_spread=0.5), MODEL)
    b = RequestSet.build(_w(prompt_tokens_spread=0.5, output_tokens_spread=0.5), MODEL)
    assert [a.spec(i) for i in range(50)] == [b.spec(i) for i in reversed(range(50))][::-1]
    assert a.spec(7) == b.spec(7)


def test_another_seed_gives_other_prompts():
    a = RequestSet.build(_w(seed=0), MODEL)
    b = RequestSet.build(_w(seed=1), MODEL)
    assert a.spec(0).prompt != b.spec(0).prompt


def test_warmup_requests_differ_from_measured_ones():
    rs = RequestSet.build(_w(), MODEL)
    measured = {tuple(rs.spec(i).prompt) for i in range(32)}
    assert not measured & {tuple(rs.spec(i, warmup=True).prompt) for i in range(32)}


def test_fixed_lengths_are_exact_token_ids_in_range():
    rs = RequestSet.build(_w(prompt_tokens=100, output_tokens=20), MODEL)
    for i in range(20):
        s = rs.spec(i)
        assert len(s.prompt) == s.prompt_tokens == 100 and s.max_tokens == 20
        assert all(rs.token_low <= t < rs.token_high for t in s.prompt)


def test_length_spread_stays_within_its_bounds_and_varies():
    rs = RequestSet.build(_w(prompt_tokens=200, prompt_tokens_spread=0.5, output_tokens=40,
                             output_tokens_spread=0.5), MODEL)
    ins = [rs.spec(i).prompt_tokens for i in range(300)]
    outs = [rs.spec(i).max_tokens for i in range(300)]
    assert 100 <= min(ins) and max(ins) <= 300 and len(set(ins)) > 50
    assert 20 <= min(outs) and max(outs) <= 60 and len(set(outs)) > 10
    assert abs(sum(ins) / len(ins) - 200) < 10


def test_shared_prefix_is_shared_within_a_group_and_differs_between_groups():
    rs = RequestSet.build(_w(prompt_tokens=64, shared_prefix_tokens=48, num_prefixes=3), MODEL)
    p = [rs.spec(i).prompt for i in range(6)]
    assert p[0][:48] == p[3][:48] and p[1][:48] == p[4][:48]
    assert p[0][:48] != p[1][:48] and p[0][48:] != p[3][48:]
    assert all(len(x) == 64 for x in p)


def test_chat_prompts_without_a_tokenizer_are_marked_approximate():
    rs = RequestSet.build(_w(endpoint="chat", prompt_tokens=30), MODEL)
    s = rs.spec(0)
    assert s.prompt[0]["role"] == "user" and len(s.prompt[0]["content"].split()) == 30
    assert s.prompt_tokens is None and not rs.exact_prompt_lengths


def test_chat_prompts_with_the_tokenizer_have_the_exact_token_count(tiny_model: Path):
    tok = load_tokenizer(tiny_model)
    rs = RequestSet.build(_w(endpoint="chat", prompt_tokens=120, prompt_tokens_spread=0.3,
                             shared_prefix_tokens=40, num_prefixes=2), MODEL, tokenizer=tiny_model)
    assert rs.exact_prompt_lengths and rs.chat_text is not None and rs.chat_text.overhead > 0
    for i in range(20):
        s = rs.spec(i)
        content = s.prompt[0]["content"]
        assert len(tok.encode(content, add_special_tokens=False).ids) == s.prompt_tokens - rs.chat_text.overhead
        assert 84 <= s.prompt_tokens <= 156
    assert rs.spec(0).prompt[0]["content"][:100] == rs.spec(2).prompt[0]["content"][:100]  # shared prefix


def test_jsonl_rows_cycle_in_order_and_warmup_reads_from_the_other_end(tmp_path: Path):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [{"prompt": "a b", "max_tokens": 5}, {"prompt": [11, 12, 13]},
                                                   {"prompt": "c", "output_tokens": 7}]) + "\n\n")
    rs = RequestSet.build(_w(dataset=str(f), output_tokens=9), MODEL)
    assert [(s.prompt, s.max_tokens, s.prompt_tokens) for s in map(rs.spec, range(4))] == [
        ("a b", 5, None), ([11, 12, 13], 9, 3), ("c", 7, None), ("a b", 5, None)]
    assert rs.spec(0, warmup=True).prompt == "c"


def test_a_bad_jsonl_line_names_the_file_and_line(tmp_path: Path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(ConfigError, match="line 2"):
        load_dataset(str(f))


def test_chat_messages_are_refused_on_the_completions_endpoint(tmp_path: Path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"prompt": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(ConfigError, match="completions prompt must be"):
        RequestSet.build(_w(dataset=str(f)), MODEL)
    rs = RequestSet.build(_w(dataset=str(f), endpoint="chat"), MODEL)
    assert rs.spec(0).prompt == [{"role": "user", "content": "hi"}]


def test_sharegpt_takes_the_first_human_turn_and_sizes_the_answer_with_a_tokenizer(tmp_path: Path,
                                                                                  tiny_model: Path):
    f = tmp_path / "s.json"
    f.write_text(json.dumps([{"conversations": [{"from": "system", "value": "be nice"},
                                                {"from": "human", "value": "hello there"},
                                                {"from": "gpt", "value": "general kenobi"}]},
                             {"messages": [{"role": "user", "content": "q2"}]},
                             {"conversations": [{"from": "gpt", "value": "no human turn"}]}]))
    plain = RequestSet.build(_w(dataset=str(f), endpoint="chat", output_tokens=11), MODEL)
    assert len(plain.dataset) == 2
    assert plain.spec(0).prompt == [{"role": "user", "content": "hello there"}] and plain.spec(0).max_tokens == 11
    sized = RequestSet.build(_w(dataset=str(f), endpoint="chat"), MODEL, tokenizer=tiny_model)
    n = len(load_tokenizer(tiny_model).encode("general kenobi", add_special_tokens=False).ids)
    assert sized.spec(0).max_tokens == n and sized.spec(1).max_tokens == 64


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "conf" / "workload")
                                        .glob("*.yaml")))
def test_every_shipped_workload_composes_and_builds(compose, name: str):
    cfg = compose(f"workload={name}")
    rs = RequestSet.build(cfg.workload, cfg.model)
    specs = [rs.spec(i) for i in range(40)]
    assert all(s.max_tokens >= 1 and s.prompt for s in specs)
    assert len({json.dumps(s.prompt) for s in specs}) > 1
