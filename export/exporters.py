"""Export one source model to one signed artifact per format.

    src = source_for_run(ws, "run1")                     # merged/run1 + the run's provenance and data
    src = source_for_model(ws, "embedded:smollm2-135m-instruct")
    paths = export_model(ws, src, ["gguf:q4_k_m", "gptq"], ExportConfig(...))
    # -> artifacts/run1-gguf-q4_k_m/, artifacts/run1-gptq/  (each: files + appliance.json + SHA256SUMS + model.sig)

GGUF formats share one f16 conversion. AWQ/GPTQ calibrate on the first rows of the run's training data
rendered with the model's chat template. With eval_samples > 0 each artifact is scored on the held-out
rows next to the source model, and the numbers go into its appliance.json ("quality") before signing.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from appliance.errors import ArtifactError, ConfigError, RunNotFoundError
from appliance.workspace import Workspace

SUFFIX = {"gguf:f16": "gguf-f16", "gguf:q8_0": "gguf-q8_0", "gguf:q4_k_m": "gguf-q4_k_m",
          "awq": "awq", "gptq": "gptq", "hf": "hf"}


@dataclass
class Source:
    """A model folder to export, the name prefix of its artifacts and what is known about its origin."""

    path: Path
    prefix: str
    provenance: dict = field(default_factory=dict)  # base_model, adapter_digest, dataset_digest, training_config, run
    calibration: Path | None = None  # training JSONL (AWQ / GPTQ calibration)
    held_out: Path | None = None  # held-out JSONL (quality)


def artifact_name(prefix: str, fmt: str) -> str:
    if fmt not in SUFFIX:
        raise ConfigError([f"formats: unknown {fmt}; choose from {', '.join(SUFFIX)}"], source="ExportConfig")
    return f"{prefix}-{SUFFIX[fmt]}"


# ------------------------------------------------------------------------------------------ sources

def source_for_run(ws: Workspace, run: str | None) -> Source:
    """merged/<run> with the run's base model, adapter and dataset digests and its training config."""
    from appliance.data import resolve_dataset, sample_eval_path
    from appliance.models import folder_digest

    run_dir = ws.run_dir(run)
    name = run_dir.name
    merged = ws.merged / name
    if not (merged / "config.json").is_file():
        raise RunNotFoundError(f"run '{name}' has no merged model in {merged}",
                               f"merge it first: `appliance merge --run {name}`, then run export again")
    info = _read_json(run_dir / "run.json")
    merge = _read_json(merged / "merge.json")
    base = info.get("base_model") or {}
    base = {"ref": base} if isinstance(base, str) else base
    dataset = info.get("dataset") or {}
    dataset = {"path": dataset} if isinstance(dataset, str) else dataset
    calibration = None
    for cand in (dataset.get("path"), dataset.get("ref")):
        if cand:
            try:
                calibration = resolve_dataset(cand)
                break
            except Exception:  # noqa: BLE001 - a moved dataset only loses calibration rows from it
                continue
    held_out = next((Path(p) for p in (info.get("eval_dataset"), run_dir / "eval.jsonl") if p and Path(p).is_file()),
                    sample_eval_path() if dataset.get("ref") in (None, "sample") else None)
    adapter = run_dir / "adapter"
    provenance = {
        "run": name,
        "base_model": {"ref": base.get("ref") or merge.get("base_model"), "digest": base.get("digest") or merge.get("base_digest")},
        "adapter_digest": merge.get("adapter_digest") or (folder_digest(adapter) if adapter.is_dir() else None),
        "dataset_digest": dataset.get("digest"),
        "training_config": _read_yaml(run_dir / "run.yaml"),
    }
    return Source(merged, name, provenance, calibration, held_out)


def source_for_model(ws: Workspace, ref: str, prefix: str | None = None) -> Source:
    """A model folder (or embedded:/hub ref) exported as is; calibrated and scored on the bundled sample data."""
    from appliance.data import resolve_dataset, sample_eval_path
    from appliance.models import folder_digest, resolve_model

    path = resolve_model(ref, ws)
    name = prefix or ref.split(":", 1)[-1].rstrip("/").split("/")[-1]
    provenance = {"base_model": {"ref": ref, "digest": folder_digest(path)}}
    return Source(path, name, provenance, resolve_dataset("sample"), sample_eval_path())


# ------------------------------------------------------------------------------------------- export

def export_model(ws: Workspace, src: Source, formats: list[str], cfg, *, overwrite: bool = False,
                 log=print) -> dict[str, Path]:
    """Write artifacts/<prefix>-<format> for each format; returns {format: path}. Prints a quality table."""
    from appliance.models import folder_digest
    from export.artifact import check_name, write_artifact
    from export.quality import print_quality_table

    names = {fmt: check_name(artifact_name(src.prefix, fmt)) for fmt in formats}
    exists = [n for n in names.values() if (ws.artifacts / n).exists()]
    if exists and not overwrite:
        raise ArtifactError(f"artifact(s) already exist: {', '.join(exists)}",
                            "pass --force to replace them, or --name to choose another prefix")
    job = _Job(ws, src, cfg, log)
    base = dict(src.provenance, source={"path": str(src.path), "digest": folder_digest(src.path)})
    out: dict[str, Path] = {}
    try:
        for fmt in formats:
            log(f"export {fmt} -> {ws.artifacts / names[fmt]}")
            quality: dict = {}
            provenance = dict(base, **_format_fields(fmt), quality=quality)
            out[fmt] = write_artifact(ws, names[fmt], lambda tmp, f=fmt, q=quality: job.fill(f, tmp, q), provenance,
                                      overwrite=overwrite, sign=cfg.sign)
            log(f"  wrote {out[fmt]} ({_size(out[fmt])})")
    finally:
        job.cleanup()
    if job.reference is not None or job.scores:
        print_quality_table({f"{src.prefix} (source)": job.reference, **job.scores},
                            str(src.held_out) if src.held_out else None)
    return out


def _format_fields(fmt: str) -> dict:
    if fmt.startswith("gguf:"):
        return {"format": "gguf", "quantization": fmt.split(":", 1)[1]}
    return {"format": fmt, "quantization": {"awq": "w4a16", "gptq": "w4a16"}.get(fmt)}


class _Job:
    """State shared by the formats of one export: the f16 GGUF, calibration texts, eval rows, reference score."""

    def __init__(self, ws: Workspace, src: Source, cfg, log):
        self.ws, self.src, self.cfg, self.log = ws, src, cfg, log
        self.scratch: Path | None = None
        self._texts: list[str] | None = None
        self._rows: list | None = None
        self._tokenizer = None
        self.reference: dict | None = None
        self.scores: dict[str, dict] = {}

    # -- one format ------------------------------------------------------------------------------
    def fill(self, fmt: str, tmp: Path, quality: dict) -> None:
        if fmt == "hf":
            self._copy_hf(tmp)
            score = lambda: self._score_hf(tmp)  # noqa: E731
        elif fmt.startswith("gguf:"):
            quant = fmt.split(":", 1)[1]
            target = tmp / f"{self.src.prefix}-{quant}.gguf"
            self._write_gguf(quant, target)
            score = lambda: self._score_gguf(target, quality)  # noqa: E731
        else:
            from export.awq import export_awq
            from export.gptq import export_gptq

            exporter = export_awq if fmt == "awq" else export_gptq
            info = exporter(self.src.path, tmp, self.calibration_texts(), self.cfg.group_size)
            quality["calibration"] = {"dataset": str(self.src.calibration), **info}
            self.log(f"  {fmt}: group size {info['group_size']}, {info['calibration_samples']} calibration rows, {info['seconds']} s")
            score = lambda: self._score_hf(tmp)  # noqa: E731
        rows = self.eval_rows()
        if rows:
            if self.reference is None:
                from export.quality import score_hf

                self.log(f"  scoring the source model on {len(rows)} held-out rows")
                self.reference = score_hf(self.src.path, rows)
            result = score()
            self.scores[fmt] = result
            quality.update({"held_out": str(self.src.held_out), "n": len(rows), "artifact": result,
                            "source": self.reference,
                            "score_delta": round(result["score"] - self.reference["score"], 4)})

    def _copy_hf(self, tmp: Path) -> None:
        for p in self.src.path.iterdir():
            if p.is_file() and not p.name.startswith("."):
                shutil.copy2(p, tmp / p.name)

    def _write_gguf(self, quant: str, target: Path) -> None:
        from export.gguf import convert_to_f16, quantize

        f16 = self._f16(convert_to_f16)
        if quant == "f16":
            shutil.copyfile(f16, target)
        else:
            secs = quantize(f16, target, quant)
            self.log(f"  quantized to {quant} in {secs:.1f} s")

    def _f16(self, convert) -> Path:
        if self.scratch is None:
            self.scratch = Path(tempfile.mkdtemp(prefix=".tmp-export-", dir=self.ws.artifacts))
        f16 = self.scratch / "model-f16.gguf"
        if not f16.exists():
            secs = convert(self.src.path, f16)
            self.log(f"  converted to GGUF f16 in {secs:.1f} s")
        return f16

    # -- data ------------------------------------------------------------------------------------
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.src.path)
        return self._tokenizer

    def calibration_texts(self) -> list[str]:
        if self._texts is None:
            from appliance.data import load_examples
            from export.compress import calibration_texts

            if self.src.calibration is None:
                raise ArtifactError("AWQ/GPTQ need calibration rows, but the run's training dataset was not found",
                                    "restore the dataset file named in runs/<run>/run.json, or export a GGUF format")
            examples = load_examples(self.src.calibration, skip_invalid=True)
            self._texts = calibration_texts(self.tokenizer(), examples, self.cfg.calibration_samples)
        return self._texts

    def eval_rows(self) -> list:
        if self._rows is None:
            from appliance.evaluate import eval_rows

            n = self.cfg.eval_samples
            self._rows = eval_rows(self.src.held_out)[:n] if n > 0 and self.src.held_out else []
        return self._rows

    # -- scoring ---------------------------------------------------------------------------------
    def _score_hf(self, folder: Path) -> dict:
        from export.quality import score_hf

        return score_hf(folder, self.eval_rows())

    def _score_gguf(self, path: Path, quality: dict) -> dict:
        from export.gguf import smoke_chat
        from export.quality import score_gguf

        quality["smoke"] = smoke = smoke_chat(path)
        if smoke["finish_reason"] != "stop":
            self.log(f"  warning: {path.name} did not stop within {96} tokens on {smoke['question']!r}: {smoke['answer'][:60]!r}")
        return score_gguf(path, self.eval_rows(), self.tokenizer())

    def cleanup(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


# ------------------------------------------------------------------------------------------- CLI

def export_from_cli(args, ws: Workspace) -> int:
    from appliance import config

    cfg = config.load(config.ExportConfig, args.config, args.overrides, formats=args.formats)
    src = source_for_model(ws, args.model, args.name) if args.model else source_for_run(ws, args.run)
    if args.name and not args.model:
        src.prefix = args.name
    paths = export_model(ws, src, cfg.formats, cfg, overwrite=args.force)
    print("\nartifacts:")
    for fmt, path in paths.items():
        print(f"  {fmt:<12} {path}")
    print("verify with `appliance verify <dir>`, serve with `appliance serve --artifact <name>`")
    return 0


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _read_yaml(path: Path) -> dict | None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, yaml.YAMLError):
        return None


def _size(path: Path) -> str:
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return f"{total / 2**20:.0f} MiB"
