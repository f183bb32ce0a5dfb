"""Summarise a multi-GPU run: peak memory used per GPU (nvidia-smi samples) and the run's tokens/s.

    python bench/multi_gpu/summarise.py gpu_mem.csv runs/<run>/metrics.jsonl
"""

import json
import statistics
import sys


def main(mem_csv: str, metrics: str) -> None:
    peak: dict[str, int] = {}
    for line in open(mem_csv):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[1].isdigit():
            peak[parts[0]] = max(peak.get(parts[0], 0), int(parts[1]))
    steps = [json.loads(x) for x in open(metrics) if x.strip()]
    rates = [r["tokens_per_s"] for r in steps if "tokens_per_s" in r]
    later = rates[2:] or rates  # the first steps include warm-up
    print("RESULT", json.dumps({"mode": "multi_gpu", "gpu_peak_used_MiB": peak, "steps": len(rates),
                                "tokens_per_s_median": statistics.median(later) if later else None,
                                "tokens_per_s_all": rates, "last_loss": steps[-1].get("loss") if steps else None}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
