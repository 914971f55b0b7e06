import subprocess
import sys

import pytest

from tio.config import RunConfig, dump_toml, load_config, parse_override
from tio.errors import ConfigError


def test_defaults_follow_the_original_service():
    c = RunConfig()
    assert c.pairs.max_next == 4
    assert c.correction.median is True
    assert c.inversion.residual_scale == 2.0
    assert c.inversion.gross_outlier == 5.0
    assert c.inversion.smoothing_gamma2 == 0.003
    assert c.inversion.min_valid_fraction == 0.3
    assert c.input.band == "B04"


def test_dump_is_valid_toml_that_round_trips(tmp_path):
    text = dump_toml()
    f = tmp_path / "tio.toml"
    f.write_text(text)
    assert load_config(f) == RunConfig()
    # every parameter is documented in the dump
    for section, field in RunConfig.model_fields.items():
        assert f"[{section}]" in text
        for name in field.annotation.model_fields:
            assert f"{name} =" in text


def test_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("correlation:\n  window: 64\n  step: 16\ninversion:\n  residual_scale: 3\n")
    c = load_config(f, {"correlation.step": 4})
    assert (c.correlation.window, c.correlation.step) == (64, 4)
    assert c.inversion.residual_scale == 3.0


@pytest.mark.parametrize(
    "key,value,expect",
    [
        ("correlation.window", 3, "correlation.window: 3"),
        ("inversion.min_valid_fraction", 1.5, "inversion.min_valid_fraction: 1.5"),
        ("inversion.pair_weighting", "best", "'best'"),
        ("input.band", "B99", "input.band"),
        ("correlation.colour", 1, "unknown parameter correlation.colour"),
        ("nosuch.key", 1, "unknown configuration section 'nosuch'"),
        ("input.aoi", [10, 0, 5, 1], "west < east"),
    ],
)
def test_bad_values_give_one_line_naming_parameter(key, value, expect):
    with pytest.raises(ConfigError) as err:
        load_config(None, {key: value})
    msg = str(err.value)
    assert expect in msg
    assert "\n" not in msg


def test_parse_override_types():
    assert parse_override("correlation.window=16") == ("correlation.window", 16)
    assert parse_override("correction.ramp=true") == ("correction.ramp", True)
    assert parse_override("input.band=B03") == ("input.band", "B03")
    with pytest.raises(ConfigError):
        parse_override("nonsense")


def test_cli_rejects_bad_value_before_work(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tio",
            "run",
            str(tmp_path),
            "-o",
            str(out),
            "--set",
            "inversion.residual_scale=-1",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "inversion.residual_scale" in lines[0] and "-1" in lines[0]
    assert not out.exists()  # no work started


def test_cli_config_prints_defaults():
    proc = subprocess.run([sys.executable, "-m", "tio", "config"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "max_next = 4" in proc.stdout and "residual_scale = 2.0" in proc.stdout


@pytest.mark.parametrize(
    "cmd",
    [
        [],
        ["run"],
        ["demo"],
        ["config"],
        ["correlate"],
        ["scenes"],
        ["quicklook"],
        ["serve"],
        ["search"],
        ["pairs"],
        ["invert"],
    ],
)
def test_every_command_has_help_with_examples(cmd):
    proc = subprocess.run(
        [sys.executable, "-m", "tio", *cmd, "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    assert "Examples:" in proc.stdout


def test_config_sections_are_the_stage_functions_options():
    """The pipeline passes config sections as keyword arguments: names must match."""
    import inspect

    from tio.config import CorrelationConfig, InversionConfig
    from tio.correlation import correlate_arrays
    from tio.inversion import invert
    from tio.pipeline import _STACK_OPTIONS
    from tio.stack import build_stack

    assert set(InversionConfig.model_fields) <= set(inspect.signature(invert).parameters)
    assert set(CorrelationConfig.model_fields) - {"min_score"} <= set(
        inspect.signature(correlate_arrays).parameters  # correlate() forwards to it
    )
    assert set(_STACK_OPTIONS) <= set(inspect.signature(build_stack).parameters)
