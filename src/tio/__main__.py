"""``python -m tio`` runs the command-line interface."""

from tio.cli.main import cli

if __name__ == "__main__":
    cli()
