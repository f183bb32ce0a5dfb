"""Prometheus metrics of the gateway, in the text exposition format (no client library needed).

    METRICS = Metrics()
    METRICS.observe_request("/v1/chat/completions", 200, seconds)
    METRICS.render(engine_state="serving", inflight=3)  -> text for GET /metrics
"""

from __future__ import annotations

import threading
from collections import defaultdict

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ENGINE_STATES = ("none", "starting", "serving", "crashed", "restarting", "held")


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency_buckets: dict[str, list[int]] = defaultdict(lambda: [0] * len(BUCKETS))
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.latency_count: dict[str, int] = defaultdict(int)
        self.tokens: dict[str, int] = defaultdict(int)
        self.swaps: dict[str, int] = defaultdict(int)
        self.last_swap_seconds = 0.0
        self.engine_restarts = 0

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, status)] += 1
            buckets = self.latency_buckets[route]
            for i, b in enumerate(BUCKETS):
                if seconds <= b:
                    buckets[i] += 1
            self.latency_sum[route] += seconds
            self.latency_count[route] += 1

    def add_tokens(self, usage: dict | None) -> None:
        if not usage:
            return
        with self._lock:
            self.tokens["prompt"] += int(usage.get("prompt_tokens") or 0)
            self.tokens["completion"] += int(usage.get("completion_tokens") or 0)

    def observe_swap(self, result: str, seconds: float | None = None) -> None:
        with self._lock:
            self.swaps[result] += 1
            if seconds is not None:
                self.last_swap_seconds = seconds

    def render(self, *, engine_state: str, inflight: int, model: str | None) -> str:
        out = ["# HELP appliance_requests_total Requests to /v1/* by route and status.",
               "# TYPE appliance_requests_total counter"]
        with self._lock:
            for (route, status), n in sorted(self.requests.items()):
                out.append(f'appliance_requests_total{{route="{route}",status="{status}"}} {n}')
            out += ["# HELP appliance_request_duration_seconds Time to the end of the response (streams included).",
                    "# TYPE appliance_request_duration_seconds histogram"]
            for route, buckets in sorted(self.latency_buckets.items()):
                for b, n in zip(BUCKETS, buckets):
                    out.append(f'appliance_request_duration_seconds_bucket{{route="{route}",le="{b}"}} {n}')
                out.append(f'appliance_request_duration_seconds_bucket{{route="{route}",le="+Inf"}} {self.latency_count[route]}')
                out.append(f'appliance_request_duration_seconds_sum{{route="{route}"}} {self.latency_sum[route]:.6f}')
                out.append(f'appliance_request_duration_seconds_count{{route="{route}"}} {self.latency_count[route]}')
            out += ["# HELP appliance_tokens_total Tokens reported by the engine (usage).",
                    "# TYPE appliance_tokens_total counter"]
            for kind in ("prompt", "completion"):
                out.append(f'appliance_tokens_total{{kind="{kind}"}} {self.tokens[kind]}')
            out += ["# HELP appliance_swaps_total Deploys by result.", "# TYPE appliance_swaps_total counter"]
            for result in ("done", "failed"):
                out.append(f'appliance_swaps_total{{result="{result}"}} {self.swaps[result]}')
            out += ["# HELP appliance_last_swap_seconds Duration of the last successful deploy.",
                    "# TYPE appliance_last_swap_seconds gauge", f"appliance_last_swap_seconds {self.last_swap_seconds:.3f}",
                    "# HELP appliance_engine_restarts_total Automatic restarts after an engine crash.",
                    "# TYPE appliance_engine_restarts_total counter", f"appliance_engine_restarts_total {self.engine_restarts}"]
        out += ["# HELP appliance_engine_state 1 for the current state of the active engine.",
                "# TYPE appliance_engine_state gauge"]
        for s in ENGINE_STATES:
            out.append(f'appliance_engine_state{{state="{s}"}} {int(s == engine_state)}')
        out += ["# HELP appliance_inflight_requests Requests being proxied now.",
                "# TYPE appliance_inflight_requests gauge", f"appliance_inflight_requests {inflight}"]
        if model:
            out += ["# HELP appliance_model_info The model being served.", "# TYPE appliance_model_info gauge",
                    f'appliance_model_info{{model="{model}"}} 1']
        return "\n".join(out) + "\n"
