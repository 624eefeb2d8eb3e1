"""Write rattler-build recipes that repackage an installed CPython (and its pip)
as relocatable conda `python` and `pip` packages, for `condastack wrap --recipe`.

A thin script over condastack.pyrecipe (which also makes the offline test
channel's python), for any interpreter on the machine (pyenv's 3.10 here, 3.12
on the GPU node), since the seed's python version need not be the one running
condastack.

    python python_recipes.py /root/.pyenv/versions/3.10.13 OUTDIR
    # -> OUTDIR/python/recipe.yaml, OUTDIR/pip/recipe.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

from condastack.channel.pyrecipe import Interpreter, pip_recipe, python_recipe

if __name__ == "__main__":
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    py = Interpreter.at(root)
    print(python_recipe(py, out / "python"))
    print(pip_recipe(py, out / "pip"))
