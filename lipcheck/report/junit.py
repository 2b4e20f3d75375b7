"""JUnit XML, as CI systems read it: a testsuite per run, a testcase per model and gate."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from lipcheck.report.run import Run

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def _xml_text(text: str | None) -> str | None:
    """Control characters XML 1.0 forbids, written as \\xNN."""
    return None if text is None else _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


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
    for element in root.iter():  # names from the file may hold characters XML 1.0 cannot carry
        element.text = _xml_text(element.text)
        for key, value in element.attrib.items():
            element.set(key, _xml_text(value) or "")
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
