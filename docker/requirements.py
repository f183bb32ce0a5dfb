"""Print a pyproject's requirements (base + the named extras), one per line, for `pip install -r`.

The image installs the dependencies from pyproject.toml alone, before the sources are copied, so
that editing code does not reinstall them:

    python docker/requirements.py pyproject.toml train export dev > requirements.txt
"""

from __future__ import annotations

import sys
import tomllib


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"{pyproject}: no extra named {', '.join(unknown)} (have: {', '.join(optional)})")
    reqs = list(project.get("dependencies", []))
    for extra in extras:
        reqs += optional[extra]
    return list(dict.fromkeys(reqs))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: requirements.py PYPROJECT [EXTRA ...]")
    print("\n".join(requirements(sys.argv[1], sys.argv[2:])))
