"""GitHub Actions: one ``::error`` annotation per failing check (network or layer), and a job summary.

Escaping follows the runner's workflow-command rules: in the message, % CR LF are
percent-encoded; in properties (file, title) also : and ,.
"""

from __future__ import annotations

from lipcheck.report import markdown
from lipcheck.report.run import Run
from lipcheck.report.text import printable


def escape_data(text: str) -> str:
    """Escape an annotation's message."""
    return printable(text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A"))


def escape_property(text: str) -> str:
    """Escape an annotation property value (file=, title=)."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def render(run: Run) -> str:
    """One annotation per failing check or unreadable model, then one plain summary line."""
    lines = []
    for result in run.results:
        if result.error is not None:
            lines.append(f"::error file={escape_property(result.path)},title={escape_property('lipcheck: cannot analyse')}::{escape_data(result.error)}")
        elif result.outcome is not None:
            for message in result.outcome.errors:
                lines.append(f"::error file={escape_property(result.path)},title={escape_property('lipcheck: no network bound')}::{escape_data(message)}")
            for check in result.outcome.failures:
                if check.value is None and result.outcome.errors:
                    continue  # already annotated as the error it is
                title = "lipcheck: layer above its threshold" if check.name == "layer" else "lipcheck: Lipschitz gate failed"
                lines.append(f"::error file={escape_property(result.path)},title={escape_property(title)}::{escape_data(check.message)}")
    lines.append(f"lipcheck: {len(run.results)} model(s), {len(run.failed)} failed, {len(run.errors)} error(s)")
    return "\n".join(lines) + "\n"


def summary(run: Run) -> str:
    """The markdown appended to $GITHUB_STEP_SUMMARY."""
    return markdown.render(run)
