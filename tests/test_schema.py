"""The JSON report validates against the schema shipped in the package, for every kind of run."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

SCHEMA = json.loads(resources.files("lipcheck").joinpath("report/report.schema.json").read_text())


def _validate(text: str) -> dict:  # type: ignore[type-arg]
    body = json.loads(text)
    jsonschema.validate(body, SCHEMA, cls=jsonschema.Draft202012Validator)
    return body


def test_the_schema_itself_is_valid() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize(
    "args",
    [
        ("inspect", "sample_models/cnn.onnx"),
        ("inspect", "sample_models/mlp.pt"),
        ("inspect", "sample_models/sn_discriminator.pt"),
        ("check", "sample_models/cnn.onnx", "--fail-above", "1.0"),
        ("check", "sample_models/mlp.pt", "--fail-above", "1.0"),
        ("check", "sample_models/mlp.onnx", "sample_models/missing.onnx", "--fail-layer-above", "1.0"),
    ],
)
def test_every_report_validates(cli, args: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli(*args, "-f", "json")
    assert code in (0, 1, 2), err
    _validate(out)


def test_the_schema_catches_a_broken_report(cli) -> None:  # type: ignore[no-untyped-def]
    _, out, _ = cli("inspect", "sample_models/mlp.onnx", "-f", "json")
    body = json.loads(out)
    del body["bound"]["upper"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, SCHEMA, cls=jsonschema.Draft202012Validator)
    body = json.loads(out)
    body["layers"][0]["lipschitz"]["upper"] = "1.0"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, SCHEMA, cls=jsonschema.Draft202012Validator)


def test_schema_version_matches_the_code() -> None:
    from lipcheck.report.data import SCHEMA_VERSION

    assert SCHEMA["$defs"]["report"]["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    assert Path(resources.files("lipcheck").joinpath("py.typed")).exists()  # type: ignore[arg-type]


def test_the_report_data_and_renderers_load_without_torch() -> None:
    """Report consumers (renderers, the schema) need no torch: the data model is plain."""
    import subprocess
    import sys

    code = (
        "import sys; import lipcheck.report.data, lipcheck.report.markdown, lipcheck.report.json_report, "
        "lipcheck.report.csv_report, lipcheck.report.github, lipcheck.report.junit, lipcheck.report.table; "
        "sys.exit(3 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
