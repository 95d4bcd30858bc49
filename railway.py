"""What the platform tells the worker about its deployment, for the start-up log: the commit it
runs, and what a deployment without DATABASE_URL risks. Railway sets these variables itself;
operators set none of them (settings.py reads the ones they do)."""

from __future__ import annotations

import os
import re
import subprocess
from typing import Mapping

from settings import PROJECT_DIR


def version(env: Mapping[str, str] = os.environ) -> str:
    """The code's version for the start-up line: "g" and the commit's short hash (as `git describe`
    writes it; the g also keeps an all-digit hash from looking like a phone number in the logs),
    from RAILWAY_GIT_COMMIT_SHA (set by Railway) or `git rev-parse`; "" when neither is known."""
    sha = (env.get("RAILWAY_GIT_COMMIT_SHA") or "").strip()
    if not re.fullmatch(r"[0-9a-fA-F]{7,40}", sha):
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True,
                                 text=True, timeout=2)
        except (OSError, subprocess.SubprocessError):
            return ""
        sha = out.stdout.strip() if out.returncode == 0 else ""
    return f"g{sha[:7].lower()}" if re.fullmatch(r"[0-9a-fA-F]{7,40}", sha) else ""


def deployment_warnings(env: Mapping[str, str] = os.environ) -> list[str]:
    """What a deployment risks, for the start-up log: on Railway without DATABASE_URL, the state
    (pending bookings, the snapshot) lives on one machine's disk."""
    if not (env.get("RAILWAY_DEPLOYMENT_ID") or "").strip() or (env.get("DATABASE_URL") or "").strip():
        return []
    if (env.get("RAILWAY_VOLUME_MOUNT_PATH") or "").strip():
        return ["State is on this service's volume (no DATABASE_URL): one replica only, and every redeploy "
                "stops this worker before the next starts, so calls are not answered while it drains. "
                "Add a Postgres service and set DATABASE_URL to redeploy without a gap."]
    return ["State is on this deployment's own disk (no DATABASE_URL, no volume): a redeploy loses bookings "
            "still waiting in the outbox and the warm inventory cache. Add a Postgres service and set "
            "DATABASE_URL (or, at least, a volume)."]
