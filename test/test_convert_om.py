"""scripts/convert_onnx_to_om.sh and `openvla-ros convert-om` on a real export. CANN's `atc` cannot
be installed here, so a stand-in `atc` on PATH records its working directory and arguments and
writes the .om file it is asked for; the commands themselves (run from the graph's folder with an
absolute output path, so external weights resolve), the defaults, the refusal of fp32 exports,
the early failure and the copied manifest are what is checked."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "convert_onnx_to_om.sh"
GRAPHS = ["vision_backbone", "projector", "vla_llm"]
BASE_PATH = "/usr/bin:/bin"  # no CANN here: `atc` is not on it
FAKE_ATC = """#!/bin/bash
echo "cwd=$PWD $*" >> "$ATC_LOG"
for arg in "$@"; do case "$arg" in --output=*) out="${arg#--output=}" ;; esac; done
echo "stand-in om" > "$out.om"
"""


@pytest.fixture()
def atc_env(tmp_path) -> dict[str, str]:
    bin_dir = tmp_path / "cann_bin"
    bin_dir.mkdir()
    (bin_dir / "atc").write_text(FAKE_ATC)
    (bin_dir / "atc").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{BASE_PATH}", "ATC_LOG": str(tmp_path / "atc.log")}


def _script(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, check=False)


def _atc_calls(env: dict[str, str]) -> dict[str, list[str]]:
    calls = {}
    for line in Path(env["ATC_LOG"]).read_text().splitlines():
        args = line.split()
        model = next(a for a in args if a.startswith("--model="))
        calls[Path(model.split("=", 1)[1]).stem] = args
    return calls


def test_fails_early_without_atc(tiny_onnx_export, tmp_path):
    out = tmp_path / "om"
    proc = _script(["--onnx", str(tiny_onnx_export), "--out", str(out)], {**os.environ, "PATH": BASE_PATH})
    assert proc.returncode == 2
    assert "'atc' is not on PATH" in proc.stderr and "set_env.sh" in proc.stderr
    assert not out.exists()


def test_converts_the_graphs_and_copies_the_manifest(tiny_onnx_export_fp16, tmp_path, atc_env, monkeypatch):
    out = tmp_path / "om"
    monkeypatch.chdir(tmp_path)  # a relative --out must still become an absolute ATC --output
    proc = _script(["--onnx", str(tiny_onnx_export_fp16), "--out", "om"], atc_env)
    assert proc.returncode == 0, proc.stderr
    calls = _atc_calls(atc_env)
    assert sorted(calls) == sorted(GRAPHS)
    for graph, args in calls.items():
        assert args[0] == f"cwd={tiny_onnx_export_fp16.resolve()}"  # external weights resolve from there
        assert f"--model=./{graph}.onnx" in args
        assert f"--output={out.resolve()}/{graph}" in args
        assert "--framework=5" in args and "--soc_version=Ascend310P3" in args
        expected = "origin" if graph == "vla_llm" else "fp16"
        assert f"--precision_mode_v2={expected}" in args
        gear_flags = [a for a in args if a.split("=")[0] in ("--input_shape", "--dynamic_dims", "--input_format")]
        if graph == "vla_llm":  # one model, two shape gears: the prefill's L and a decode step's 1
            length = json.loads((tiny_onnx_export_fp16 / "manifest.json").read_text())["sequence"]["length"]
            assert gear_flags == ["--input_shape=input_ids:1,-1;attention_mask:1,-1;position_ids:1,-1",
                                  f"--dynamic_dims={length},{length},{length};1,1,1", "--input_format=ND"]
        else:
            assert gear_flags == []
    names = {p.name for p in out.iterdir()}
    assert {f"{g}.om" for g in GRAPHS} <= names
    assert {"manifest.json", "tokenizer.json", "preprocessor_config.json"} <= names
    assert not any(n.endswith(".onnx") for n in names)


def test_refuses_fp32_exports_unless_allowed(tiny_onnx_export, tmp_path, atc_env):
    proc = _script(["--onnx", str(tiny_onnx_export), "--out", str(tmp_path / "om")], atc_env)
    assert proc.returncode == 2
    assert "fp32 export" in proc.stderr and "export with --dtype fp16" in proc.stderr and "--allow-fp32" in proc.stderr
    assert not Path(atc_env["ATC_LOG"]).exists() and not (tmp_path / "om").exists()
    proc = subprocess.run(
        [sys.executable, "-m", "openvla_ros.cli", "convert-om", "--onnx", str(tiny_onnx_export),
         "--out", str(tmp_path / "om"), "--allow-fp32"], env=atc_env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert sorted(_atc_calls(atc_env)) == sorted(GRAPHS)


def test_cli_passes_soc_and_per_graph_precision(tiny_onnx_export_fp16, tmp_path, atc_env):
    out = tmp_path / "om"
    proc = subprocess.run(
        [sys.executable, "-m", "openvla_ros.cli", "convert-om", "--onnx", str(tiny_onnx_export_fp16), "--out", str(out),
         "--soc-version", "Ascend310P1", "--precision", "vla_llm=mixed_float16", "--precision", "projector=origin"],
        env=atc_env, capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    calls = _atc_calls(atc_env)
    assert "--precision_mode_v2=mixed_float16" in calls["vla_llm"]
    assert "--precision_mode_v2=origin" in calls["projector"]
    assert "--precision_mode_v2=fp16" in calls["vision_backbone"]
    assert all("--soc_version=Ascend310P1" in args for args in calls.values())


def test_rejects_bad_precision_and_incomplete_exports(tiny_onnx_export, tmp_path, atc_env):
    proc = _script(["--onnx", str(tiny_onnx_export), "--out", str(tmp_path / "om"), "--precision", "decoder=fp16"],
                   atc_env)
    assert proc.returncode == 2 and "GRAPH one of vision_backbone" in proc.stderr
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy2(tiny_onnx_export / "manifest.json", partial)
    proc = _script(["--onnx", str(partial), "--out", str(tmp_path / "om2")], atc_env)
    assert proc.returncode == 2 and "vision_backbone.onnx not found" in proc.stderr


def test_dry_run_prints_the_commands_without_atc(tiny_onnx_export_fp16, tmp_path):
    proc = _script(["--onnx", str(tiny_onnx_export_fp16), "--out", str(tmp_path / "om"), "--dry-run"],
                   {**os.environ, "PATH": BASE_PATH})
    assert proc.returncode == 0, proc.stderr
    atc_lines = [line for line in proc.stdout.splitlines() if line.startswith("atc ")]
    assert len(atc_lines) == 3 and all("--framework=5" in line for line in atc_lines)
    assert proc.stdout.splitlines().count(f"cd {tiny_onnx_export_fp16.resolve()}") == 3


def test_refuses_a_two_graph_export_with_a_re_export_line(tiny_onnx_export_fp16, tmp_path, atc_env):
    """An export made before the shared LLM graph (vla_prefill + vla_decoder) is not converted."""
    legacy = shutil.copytree(tiny_onnx_export_fp16, tmp_path / "legacy")
    manifest = json.loads((legacy / "manifest.json").read_text())
    llm = manifest["graphs"].pop("vla_llm")
    manifest["graphs"].update({"vla_prefill": {**llm, "file": "vla_prefill.onnx"},
                               "vla_decoder": {**llm, "file": "vla_decoder.onnx"}})
    (legacy / "manifest.json").write_text(json.dumps(manifest))
    proc = _script(["--onnx", str(legacy), "--out", str(tmp_path / "om")], atc_env)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "made before the shared LLM graph" in proc.stderr and "re-export" in proc.stderr
    assert not Path(atc_env["ATC_LOG"]).exists()
