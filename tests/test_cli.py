"""The CLI contract: instant help (no heavy imports), clear errors, config validation."""

from __future__ import annotations

import subprocess
import sys

import pytest

from appliance import cli, config
from appliance.errors import ConfigError

HEAVY = ("torch", "transformers", "vllm", "llama_cpp", "llmcompressor", "peft")


def _imported_after(code: str) -> set[str]:
    probe = (f"import sys\n{code}\n"
             f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    line = [ln for ln in out.splitlines() if ln.startswith("HEAVY=")][-1]
    return {m for m in line[len("HEAVY="):].split(",") if m}


def test_help_imports_nothing_heavy():
    code = ("from appliance.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "for c in ('train','export','serve','deploy','verify','chat','merge'):\n"
            "    try:\n        main([c, '--help'])\n    except SystemExit:\n        pass")
    assert _imported_after(code) == set()


def test_every_command_has_a_handler_module():
    missing = [name for name in cli.COMMANDS if cli.resolve_handler(name) is None]
    assert missing == [], f"commands without a handler: {missing}"


def test_status_lists_workspace(tmp_path, capsys):
    assert cli.main(["status", "--home", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "runs: (none)" in out and "artifacts: (none)" in out
    for d in ("models", "runs", "merged", "artifacts", "keys", "trust"):
        assert (tmp_path / d).is_dir()


def test_config_reports_every_problem_at_once(tmp_path):
    bad = tmp_path / "train.yaml"
    bad.write_text("lr: -1\nbatch_size: zero\nlora_rnk: 8\nmethod: qlora\n")
    with pytest.raises(ConfigError) as e:
        config.load(config.TrainConfig, bad, ["max_steps=abc", "nokey"])
    text = str(e.value)
    assert "batch_size" in text and "expected an integer" in text
    assert "lora_rnk" in text and "did you mean 'lora_r'" in text
    assert "max_steps" in text and "nokey" in text
    assert "lr: must be > 0" in text
    assert len(e.value.problems) == 5


def test_config_layers_defaults_file_overrides(tmp_path):
    f = tmp_path / "all.yaml"
    f.write_text("train:\n  lr: 0.001\n  batch_size: 4\nexport:\n  formats: [awq]\n")
    cfg = config.load(config.TrainConfig, f, ["batch_size=2", "train.packing=true"])
    assert (cfg.lr, cfg.batch_size, cfg.packing) == (0.001, 2, True)
    assert config.load(config.TrainConfig, None, ["lr=1e-4"]).lr == 1e-4  # YAML reads 1e-4 as a string
    assert config.load(config.ExportConfig, f).formats == ["awq"]
    # YAML 1.1 reads bare on/off as booleans: the on/off choices still take them, in --set and files
    cfg = config.load(config.TrainConfig, None, ["kernels=off", "gradient_checkpointing=on"])
    assert (cfg.kernels, cfg.gradient_checkpointing) == ("off", "on")
    f.write_text("train:\n  gradient_checkpointing: off\n")
    assert config.load(config.TrainConfig, f).gradient_checkpointing == "off"
    with pytest.raises(ConfigError, match="kernels"):
        config.load(config.TrainConfig, None, ["kernels=on"])
    with pytest.raises(ConfigError, match="lr: must be > 0"):
        config.load(config.TrainConfig, None, ["lr=0"])


def test_user_error_exits_nonzero_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "appliance.cli", "train", "--home", str(tmp_path),
                        "--set", "batch_sise=4"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "batch_sise" in r.stderr and "did you mean 'batch_size'" in r.stderr
