"""onnxruntime runs with a time limit: a model whose run does not end (a Loop with a huge trip count) is stopped."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

# One run of a model taking longer than this is taken as one that does not end.
RUN_SECONDS = 60.0


def run(session: Any, names: Sequence[str] | None, feeds: Mapping[str, Any], seconds: float | None = None) -> list[Any]:
    """``session.run(names, feeds)``, stopped with a RuntimeError once it has taken ``seconds`` (default RUN_SECONDS)."""
    import onnxruntime as ort

    seconds = RUN_SECONDS if seconds is None else seconds
    options = ort.RunOptions()
    options.log_severity_level = 4  # the stop is reported here, not logged by onnxruntime
    timer = threading.Timer(seconds, lambda: setattr(options, "terminate", True))
    timer.daemon = True
    timer.start()
    try:
        return list(session.run(names, dict(feeds), options))
    except Exception:
        if options.terminate:
            raise RuntimeError(f"one run of the model took over {seconds:g} s and was stopped (a loop that does not end?)") from None
        raise
    finally:
        timer.cancel()
