"""The `slipstream` command line end to end: a saved tiny checkpoint through `optimize --save --dump-dir`, the
graph diff from a fresh process, bisection, help everywhere, and errors as one line plus a hint."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models
from slipstream.cli import main
from slipstream.config import parse_config, preset_config
from slipstream.passes import PRESETS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent / "debug"))
import broken_rules  # noqa: E402
from golden import GOLDEN  # noqa: E402


def slipstream_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "slipstream", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=1500)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny-llama"
    models.build("llama").save_pretrained(path)
    return path


@pytest.mark.slow
def test_optimize_saves_a_model_transformers_loads_and_dumps_a_repro(checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM
    out, dump = tmp_path / "out", tmp_path / "dump"
    done = slipstream_cli("optimize", str(checkpoint), "--save", str(out), "--dump-dir", str(dump), "--verify",
                          "--quiet")
    assert done.returncode == 0, done.stderr
    assert "fuse-rms-norm: fused 5 (weight-times-cast x5)" in done.stdout
    assert "verify: 7 region(s) checked · 7 ok" in done.stdout
    ids = models.token_batch()
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(checkpoint).eval()(ids).logits
        got = AutoModelForCausalLM.from_pretrained(out).eval()(ids).logits  # plain transformers, no slipstream
    assert torch.equal(got, want)
    assert '"pipeline": "' + PRESETS["default"] in (out / "slipstream.json").read_text()

    assert (dump / "pipeline.txt").read_text() == PRESETS["default"] + "\n"
    layer = dump / "graphs" / "g0-model.layers.0"
    names = sorted(p.name for p in layer.iterdir())
    assert names == ["00-input.py", "01-fuse-rms-norm.py", "02-fuse-swiglu.py", "03-fuse-rope.py",
                     "04-fuse-attention.py"]
    assert "def forward(self" in (layer / "00-input.py").read_text()
    assert "torch.ops.slipstream.rms_norm.default" in (layer / "01-fuse-rms-norm.py").read_text()
    dots = sorted(p.name for p in (dump / "regions").iterdir())
    assert len(dots) == 2 * 6 and "g0-fuse-rms-norm-0-before.dot" in dots  # 7 rewrites: RoPE's q and k share one
    assert (dump / "regions" / "g0-fuse-rms-norm-0-after.dot").read_text().startswith("digraph ")
    assert "<table class=\"region\">" in (dump / "report.html").read_text()

    rerun = subprocess.run([sys.executable, str(dump / "repro.py")], capture_output=True, text=True, cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=1500)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.startswith(f"slipstream 0.1.0 · pipeline: {PRESETS['default']}\n")
    assert "@@ weight-times-cast at model.layers.0.input_layernorm: %7 -> %61" in rerun.stdout


def test_diff_in_a_fresh_process_is_byte_identical_to_the_golden_file(checkpoint):
    done = slipstream_cli("diff", str(checkpoint), "--no-times", "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stdout == (GOLDEN / "llama_default.diff").read_text()


def test_diff_verify_and_bisect_name_the_broken_rule(checkpoint, monkeypatch, capsys):
    broken_rules.install(monkeypatch)
    assert main(["diff", str(checkpoint), "--verify", "--bisect", "--quiet", "--print-after", "none"]) == 1
    out = capsys.readouterr().out
    assert ("verify: FIRST REGION OUT OF TOLERANCE: fuse-rms-norm:dropped-eps at model.layers.0.input_layernorm "
            "(graph 0, %7 -> %61)") in out
    assert ("bisect: first drifting rewrite: fuse-rms-norm:dropped-eps at model.layers.0.input_layernorm "
            "(graph 0, %7 -> %61; application 1 of 3)") in out


def test_pipeline_print_expands_a_preset_with_every_default(capsys):
    assert main(["pipeline", "--print", "train-qlora"]) == 0
    text = capsys.readouterr().out
    assert parse_config(text) == preset_config("train-qlora")
    assert "quantize-weights{include=* exclude=*lm_head format=nf4 group-size=128" in text
    assert main(["pipeline", "--print", "default", "--text"]) == 0
    assert capsys.readouterr().out.strip() == preset_config("default").pipeline.full_text()


@pytest.mark.parametrize("command", [["optimize"], ["diff"], ["pipeline"], ["export"], ["export", "gguf"],
                                     ["bench"], []])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: slipstream") and ("exit codes:" in out or command[:1] == ["export"])


def _error(capsys, *argv: str) -> tuple[int, list[str]]:
    code = main(list(argv))
    return code, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("argv,message", [
    (["optimize", "/no/such/dir"], "slipstream optimize: error: no such checkpoint directory: /no/such/dir"),
    (["optimize", "demo", "--pipeline", "fuse-rms-nrom"], "unknown pass 'fuse-rms-nrom'; did you mean 'fuse-rms-norm'?"),
    (["diff", "demo", "--config", "/no/such.toml"], "slipstream diff: error: /no/such.toml: no such config file"),
    (["pipeline", "--print", "defualt"], "unknown preset 'defualt'; did you mean 'default'?"),
    (["pipeline", "--check", "fuse-swiglu{geglu=maybe}"], "bad value 'maybe' for option 'geglu'"),
    (["bench", "kernals"], "unknown benchmark 'kernals'; did you mean 'kernels'?"),
    (["export", "gguf", "/no/such/dir", "x.gguf", "--quiet"], "slipstream export: error: "),
])
def test_user_errors_are_one_line_and_a_hint(argv, message, capsys):
    code, err = _error(capsys, *argv)
    assert code == 2 and len(err) == 2, err
    assert message in err[0] and err[1].startswith("  hint: ")


def test_config_errors_name_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('version = 1\npipeline = "default"\n[debug]\nprint_after = "all"\n')
    code, err = _error(capsys, "optimize", str(tmp_path), "--config", str(bad))
    assert code == 2 and err[0].endswith("unknown key 'debug.print_after'; did you mean 'print-after'?")
    assert "slipstream pipeline --print default" in err[1]


def test_not_a_checkpoint_directory(tmp_path, capsys):
    code, err = _error(capsys, "optimize", str(tmp_path))
    assert code == 2 and "has no config.json" in err[0]


def test_internal_errors_hide_the_traceback_unless_debug(monkeypatch, capsys):
    from slipstream.commands import pipeline
    monkeypatch.setattr(pipeline, "run", lambda args: 1 / 0)
    code, err = _error(capsys, "pipeline", "--list")
    assert code == 3 and err[0] == "slipstream pipeline: error: ZeroDivisionError: division by zero"
    assert "--debug" in err[1] and len(err) == 2
    with pytest.raises(ZeroDivisionError):
        main(["pipeline", "--list", "--debug"])


def test_user_error_from_the_real_entry_point_has_no_traceback():
    done = slipstream_cli("optimize", "/no/such/dir")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[0] == "slipstream optimize: error: no such checkpoint directory: /no/such/dir"


def test_bench_runs_scripts_and_reports_failures(tmp_path, capfd):
    capsys = capfd  # the scripts write to the real file descriptors
    (tmp_path / "fast.py").write_text("import sys\nprint('fast ran', sys.argv[1:])\n")
    (tmp_path / "broken.py").write_text("raise SystemExit(3)\n")
    assert main(["bench", "--dir", str(tmp_path), "--list"]) == 0
    assert capsys.readouterr().out.split() == ["broken", "fast"]
    assert main(["bench", "fast", "--dir", str(tmp_path), "--quiet", "--args", "--size 8"]) == 0
    assert "fast ran ['--size', '8']" in capsys.readouterr().out
    assert main(["bench", "fast", "broken", "--dir", str(tmp_path), "--quiet"]) == 1
    assert "slipstream bench: failed: broken" in capsys.readouterr().err
