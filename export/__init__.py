"""Merged model -> signed, self-describing artifacts (GGUF, AWQ, GPTQ, plain HF), and their verification.

    from export.artifact import write_artifact, read_manifest
    from export.signing import ensure_keypair, trusted_keys, sign_dir
    from export.verify import verify_artifact

    path = write_artifact(ws, "demo-hf", lambda tmp: copy_model(tmp), {"format": "hf"})
    report = verify_artifact(path, trusted_keys(ws))     # VerificationError lists missing/extra/mismatched

    from export.exporters import export_model, source_for_run, source_for_model
    export_model(ws, source_for_run(ws, "run1"), ["gguf:q4_k_m", "gptq"], cfg)   # -> artifacts/run1-gguf-q4_k_m, run1-gptq

Modules: artifact (atomic write), manifest (appliance.json, SHA256SUMS), signing (keys, model.sig),
verify (report with missing/extra/mismatched), exporters (formats of one source), gguf / awq / gptq /
compress (the converters), quality (scores at export).

Each artifact directory holds its model files plus appliance.json (provenance, see manifest.py),
SHA256SUMS (`sha256sum -c SHA256SUMS`) and model.sig (OpenSSF model-signing bundle; check with
`model_signing verify key DIR --signature DIR/model.sig --public_key signing.pub`).
Command-line handlers live in export/cli.py (`appliance export | verify | keys`).
"""
