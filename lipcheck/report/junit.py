"""JUnit XML, as CI systems read it: a testsuite per run, a testcase per model and gate."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from lipcheck.report.run import Run


def render(run: Run) -> str:
    """One testcase per (model, check); a model without checks is one passing 'analysed' case."""
    suite = ET.Element("testsuite", name="lipcheck")
    tests = failures = errors = 0
    for result in run.results:
        classname = f"lipcheck.{result.path}"
        if result.error is not None:
            case = ET.SubElement(suite, "testcase", classname=classname, name="analyse")
            ET.SubElement(case, "error", message=result.error, type="LipcheckError").text = result.error
            tests, errors = tests + 1, errors + 1
            continue
        checks = result.outcome.checks if result.outcome is not None else []
        if not checks:
            ET.SubElement(suite, "testcase", classname=classname, name="analysed")
            tests += 1
        for check in checks:
            name = f"{check.name} {check.subject} <= {check.threshold!r}"
            case = ET.SubElement(suite, "testcase", classname=classname, name=name)
            tests += 1
            if check.value is None and result.outcome is not None and result.outcome.errors:
                errors += 1
                text = "; ".join(result.outcome.errors)
                ET.SubElement(case, "error", message=text, type="NoNetworkBound").text = text
            elif not check.passed:
                failures += 1
                ET.SubElement(case, "failure", message=check.message, type="LipschitzGate").text = check.message
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    root = ET.Element("testsuites", name="lipcheck", tests=str(tests), failures=str(failures), errors=str(errors))
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
