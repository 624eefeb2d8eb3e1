"""Locking with an external conda-lock binary (--solver conda/mamba/micromamba), layered as condastack locks."""


from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from condastack.core import layout
from condastack.core.credentials import redact
from condastack.core.errors import CondastackError
from condastack.core.fs import TMP_MARK, atomic_write_text, file_lock
from condastack.core.layout import lock_dir, lockfile_path
from condastack.core.names import mapping_url
from condastack.lock.layered import _write_derived
from condastack.lock.lockfile import read_raw
from condastack.spec.stack import Stack


def lock_with_conda_lock(stack: Stack, layers: list[str] | None, solver: str, binary: str) -> list[Path]:
    """Run conda-lock's own pipeline (conda/mamba/micromamba as solver) for each layer.

    conda-lock cannot pin a parent's exact builds, so a child is solved from
    the union of its chain's files and then checked: any parent package whose
    version or build moved is an error, and the child's lockfile is not written.
    """


    exe = shutil.which("conda-lock") or str(Path(sys.executable).parent / "conda-lock")
    out: list[Path] = []
    ldir = lock_dir(stack.root)
    ldir.mkdir(parents=True, exist_ok=True)
    with file_lock(layout.lock_mutex(stack.root)):
        for name in stack.order(layers):
            final = lockfile_path(stack.root, name)
            with tempfile.TemporaryDirectory(dir=ldir, prefix=f"{TMP_MARK}conda-lock.{os.getpid()}.") as tmp:
                vp = Path(tmp) / "virtual-packages.yml"
                # conda-lock's spec writes a build as "1 x86_64" where condastack writes 1=x86_64
                vp.write_text(yaml.safe_dump({"subdirs": {p: {"packages": {
                    k: v.replace("=", " ") for k, v in stack.effective_virtual_packages_for(p).items()}}
                    for p in stack.platforms}}))
                target = Path(tmp) / final.name
                cmd = [exe, "lock", f"--{'micromamba' if solver == 'micromamba' else 'no-micromamba'}",
                       "--conda", binary, "--virtual-package-spec", str(vp), "--lockfile", str(target),
                       "--pypi_to_conda_lookup_file", mapping_url()]
                for layer in stack.chain(name):
                    cmd += ["-f", str(layer.file)]
                for p in stack.platforms:
                    cmd += ["-p", p]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    tail = " ".join(redact(proc.stderr).strip().splitlines()[-6:])
                    raise CondastackError(f"layer {name}: conda-lock ({solver}) failed: {tail}")
                parent = stack.layer(name).extends
                if parent:
                    _check_superset(name, parent, lockfile_path(stack.root, parent), target)
                atomic_write_text(final, target.read_text())
                _write_derived(stack, name, read_raw(final))
            out.append(final)
    return out


def _check_superset(name: str, parent: str, parent_lock: Path, child_lock: Path) -> None:
    have = {(p["platform"], p["name"]): (p["version"], p.get("build")) for p in read_raw(child_lock)["package"]}
    for p in read_raw(parent_lock)["package"]:
        got = have.get((p["platform"], p["name"]))
        if got != (p["version"], p.get("build")):
            now = f"{got[0]} {got[1]}" if got else "nothing"
            raise CondastackError(f"layer {name}: conda-lock resolved {p['name']} to {now}, but layer {parent} "
                                  f"pins {p['name']} {p['version']} {p.get('build')} ({p['platform']}). "
                                  "Use the default solver, which keeps parent pins exactly.")
