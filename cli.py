#!/usr/bin/env python3
"""Run condastack from a checkout: `python cli.py ...` == `condastack ...`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from condastack.cli.app import main  # noqa: E402

if __name__ == "__main__":
    main(prog_name="condastack")
