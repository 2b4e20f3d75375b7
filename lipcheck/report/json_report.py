"""The JSON renderer: one object per design.md section 3."""

from __future__ import annotations

import json
import math
from typing import Any

from lipcheck.report.data import Report


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def render(report: Report) -> str:
    """Render a report as JSON; non-finite numbers become null so the output stays valid JSON."""
    return json.dumps(_finite(report.to_dict()), indent=2, allow_nan=False) + "\n"
