"""Installing a lock's wheels into an env with the env's own pip, as if at its final path, with checked-hash
bytecode.
"""


from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

from condastack.core.errors import CondastackError
from condastack.core.fs import TMP_MARK
from condastack.core.names import canonical
from condastack.core.pyc import compileall_argv
from condastack.env.prefix import site_packages_dirs

# Runs pip with sys.executable set to the FINAL interpreter, so console-script
# shebangs name the final prefix although pip runs from the temporary one.
_PIP_AS_FINAL = ("import sys; sys.executable = sys.argv.pop(1); from pip._internal.cli.main import main; "
                 "sys.exit(main())")


def install_wheels(tmp: Path, final: Path, wheels: tuple | list, paths: list[Path]) -> None:
    """`python -m pip install --no-deps --require-hashes` of the locked wheels into the env at `tmp`."""
    python = tmp / "bin" / "python"
    if not python.exists():
        raise CondastackError(f"{final}: the lock has pip packages ({', '.join(w.name for w in wheels)}) but no "
                              "python in its conda part. Add python and pip to the layer and re-lock.")
    sdists = [f"{w.name} {w.version} ({w.url.rsplit('/', 1)[-1]})" for w in wheels
              if not w.url.split("#", 1)[0].endswith(".whl")]
    if sdists:  # pip would build them, offline, with a build backend the env does not have
        raise CondastackError(
            f"{final}: the lock has pip source distributions, not wheels: {'; '.join(sdists)}. condastack installs "
            "locked wheels only. Drop the requirement that pulls them in, build wheels and serve them from a "
            "`pip-index`, or make them conda packages with `condastack wrap`, then re-lock.")
    req = tmp.parent / f"{TMP_MARK}{final.name}.{os.getpid()}.requirements.txt"
    req.write_text("".join(f"{w.name} @ {p.as_uri()} --hash=sha256:{w.sha256}\n"
                           for w, p in zip(wheels, paths, strict=False)))
    # No bytecode from this run: it would record the temporary path as co_filename.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INPUT="1", PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1")
    try:
        p = subprocess.run(
            [str(python), "-c", _PIP_AS_FINAL, str(final / "bin" / "python"), "install", "--no-deps",
             "--require-hashes", "--no-index", "--disable-pip-version-check", "--no-warn-script-location",
             "--no-compile", "-r", str(req)],
            capture_output=True, text=True, env=env,
        )
        if p.returncode == 0:
            p = _compile_as_final(python, tmp, final, wheels, env)
    finally:
        req.unlink(missing_ok=True)
    if p.returncode != 0:
        out = (p.stdout + p.stderr).strip()
        if "No space left on device" in out:
            raise OSError(errno.ENOSPC, out)
        if "No module named pip" in out:
            raise CondastackError(f"{final}: the lock has pip packages but its environment has no pip. Add pip to "
                                  "the layer and re-lock.")
        tail = " | ".join(out.splitlines()[-6:])
        raise CondastackError(f"{final}: pip could not install the locked wheels: {tail}")


def _compile_as_final(python: Path, tmp: Path, final: Path, wheels: tuple | list,
                      env: dict[str, str]) -> subprocess.CompletedProcess:
    """Byte-compile what pip installed, recording the final paths in the .pyc files.

    Checked-hash .pyc files: they stay valid whatever mtimes the files get later (a pack
    clamps the ones written at build time), so python never recompiles them at start-up.
    """
    names = {canonical(w.name) for w in wheels}
    sources: list[str] = []
    for sp in site_packages_dirs(tmp):
        for d in sp.glob("*.dist-info"):
            if canonical(d.name[: -len(".dist-info")].partition("-")[0]) not in names:
                continue
            for line in (d / "RECORD").read_text().splitlines():
                rel = line.split(",", 1)[0]
                if rel.endswith(".py"):
                    sources.append(os.path.normpath(sp / rel))
    return subprocess.run(compileall_argv(str(python), strip=str(tmp), prepend=str(final), from_stdin=True),
                          input="\n".join(sources) + "\n", capture_output=True, text=True, env=env)
