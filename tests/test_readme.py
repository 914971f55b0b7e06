"""The README stays true: its parameter table is the configuration model's."""

from pathlib import Path

from tio.config import markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_parameter_table_matches_the_configuration():
    text = README.read_text()
    assert markdown_table() in text, (
        "regenerate the README table with "
        "python -c 'from tio.config import markdown_table; print(markdown_table())'"
    )


def test_readme_test_command_is_what_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in README.read_text() and "make test" in ci
