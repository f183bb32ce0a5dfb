"""The second half of the demo: export signed artifacts, verify them, serve one, hot-swap the other.

Appended to `appliance.demo.STEPS`. Everything goes through the same entry points a user types:
`export_model` (what `appliance export` calls), `verify_artifact` (`appliance verify`), a real
`appliance serve` process on a free loopback port, and `appliance deploy` against it.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time

DEMO_FORMATS = ["gguf:q4_k_m", "gptq"]


def export_step(demo) -> str:
    from appliance.config import ExportConfig, load
    from export.exporters import export_model, source_for_run

    cfg = load(ExportConfig, None, [], formats=DEMO_FORMATS, calibration_samples=32,
               eval_samples=demo.args.limit or 40)
    demo.artifacts = list(export_model(demo.ws, source_for_run(demo.ws, demo.run_name), DEMO_FORMATS, cfg).values())
    return ", ".join(p.name for p in demo.artifacts)


def verify_step(demo) -> str:
    from export.signing import trusted_keys
    from export.verify import verify_artifact

    lines = []
    for path in demo.artifacts:
        report = verify_artifact(path, trusted_keys(demo.ws))
        # The same check anyone can make with coreutils alone.
        subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=path, check=True)
        lines.append(f"{path.name}: {report.files} files, signed by {report.signer}")
    return "; ".join(lines)


def serve_step(demo) -> str:
    """Start the gateway on the GGUF artifact (llama.cpp engine) and ask it a held-out question."""
    from appliance.evaluate import prompt_and_reference

    gguf = next(p for p in demo.artifacts if "gguf" in p.name)
    from serve.engines import free_port

    port = free_port()
    demo.gateway_url = f"http://127.0.0.1:{port}"
    demo.admin_token = secrets.token_urlsafe(24)
    env = dict(os.environ, APPLIANCE_ADMIN_TOKEN=demo.admin_token, PYTHONUNBUFFERED="1")
    log = open(demo.ws.home / "demo-gateway.log", "w")
    demo.gateway = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "serve", "--home", str(demo.ws.home), "--artifact", gguf.name,
         "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    _wait_ready(demo.gateway_url, demo.gateway, timeout=300)
    messages, reference = prompt_and_reference(demo.eval_rows()[1])
    answer = _ask(demo.gateway_url, gguf.name, messages)
    print(f"  user> {messages[-1]['content']}\n  {gguf.name}> {answer}\n  (reference: {reference})")
    return f"gateway {demo.gateway_url}/v1 serving {gguf.name} (llama.cpp)"


def deploy_step(demo) -> str:
    """Hot-swap the GPTQ artifact (vLLM engine) into the running gateway, then ask again."""
    from appliance import cli
    from appliance.evaluate import prompt_and_reference

    gptq = next(p for p in demo.artifacts if p.name.endswith("-gptq"))
    try:
        code = cli.main(["deploy", gptq.name, "--home", str(demo.ws.home), "--url", demo.gateway_url,
                         "--token", demo.admin_token])
        if code != 0:
            raise RuntimeError(f"deploy exited {code}; see {demo.ws.home / 'demo-gateway.log'}")
        messages, reference = prompt_and_reference(demo.eval_rows()[2])
        answer = _ask(demo.gateway_url, gptq.name, messages)
        print(f"  user> {messages[-1]['content']}\n  {gptq.name}> {answer}\n  (reference: {reference})")
        return f"now serving {gptq.name} (vLLM) at {demo.gateway_url}/v1"
    finally:
        stop_gateway(demo)


def stop_gateway(demo) -> None:
    proc = getattr(demo, "gateway", None)
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


STEPS = [("export", export_step), ("verify", verify_step), ("serve", serve_step), ("deploy", deploy_step)]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the gateway at {url} was not ready after {timeout:.0f} s")


def _ask(url: str, model: str, messages: list[dict]) -> str:
    import httpx

    r = httpx.post(f"{url}/v1/chat/completions", timeout=120,
                   json={"model": model, "messages": messages, "max_tokens": 48, "temperature": 0})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"].strip()
