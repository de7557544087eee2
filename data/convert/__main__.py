"""`python -m data.convert ...`: run the converter's command line (see data/convert/cli.py)."""
import sys

from data.convert.cli import cli

sys.exit(cli())
