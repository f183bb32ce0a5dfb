"""Container health probe: exit 0 when the gateway answers GET /health with 200, else 1.

The URL is $APPLIANCE_HEALTH_URL (the image sets http://127.0.0.1:8000/health). Standard library only,
so it runs in any Python of the image.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8000/health"


def main() -> int:
    url = os.environ.get("APPLIANCE_HEALTH_URL", DEFAULT_URL)
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:
            ok = resp.status == 200
    except (urllib.error.URLError, OSError) as e:
        print(f"unhealthy: {url}: {e}", file=sys.stderr)
        return 1
    if not ok:
        print(f"unhealthy: {url}: HTTP {resp.status}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
