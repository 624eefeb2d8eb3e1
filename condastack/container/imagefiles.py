"""The files inside a written root filesystem that the runtimes read: enroot's and Apptainer's, plus condastack's own.

One SquashFS serves enroot/pyxis (`srun --container-image=app.sqsh`) and Apptainer (as a SIF's
partition, or `apptainer exec app.sqsh`), so it carries what each reads at start-up:

- **enroot** (src/runtime.sh, src/docker.sh of NVIDIA/enroot 4.x): `/etc/environment` is read line by
  line into the container's environment (`KEY=VALUE`, `${VAR}` replaced from the host, one pair of
  surrounding quotes dropped, comments and `ENROOT_*` names removed); `/etc/rc` is what
  enroot-switchroot runs with the command's arguments (`enroot import` writes it: labels as comments, `cd`
  to the working folder, source `/etc/rc.local`, `exec "$@"` or the image's command); `/etc/rc.local` is
  sourced by it (pyxis replaces it with `exec "$@"`). enroot starts that shell as a login shell
  (ENROOT_LOGIN_SHELL), so Debian's `/etc/profile` resets PATH after `/etc/environment` was read:
  `/etc/profile.d/condastack.sh` puts the env's `bin/` back in front. pyxis starts the container with
  `enroot start` and gives each task that shell's environment.
- **Apptainer** (internal/pkg/build/sources/base_environment.go, action_script.sh of apptainer 1.2): its
  embedded action script sources `/.singularity.d/env/*.sh` in order, `run` executes
  `/.singularity.d/runscript`, `inspect` reads `/.singularity.d/labels.json` and `/.singularity.d/Singularity`
  (the definition); `99-base.sh` adds `/.singularity.d/libs` (where `--nv` binds the driver's libraries) to
  LD_LIBRARY_PATH.
- **condastack**: `/etc/condastack/labels.json` holds the labels, the lock hash, the prefix and the variables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from condastack.container.render import apptainer_environment, apptainer_runscript
from condastack.container.spec import DEFAULT_PATH, ContainerSpec
from condastack.core import quoting
from condastack.core.errors import CondastackError

# Where condastack's own record of the image lives inside it.
CONDASTACK_LABELS = "etc/condastack/labels.json"


@dataclass(frozen=True)
class ImageFile:
    """A file (or, with `link`, a symlink) to write at `path`, relative to the image root."""

    path: str
    data: bytes = b""
    mode: int = 0o644
    link: str | None = None


def _enroot_environment(spec: ContainerSpec) -> str:
    """/etc/environment as enroot reads it: KEY=VALUE lines (the quoting gate refuses what enroot would
    change: line breaks, '$', '\\')."""
    lines = []
    for key, value in spec.env(DEFAULT_PATH).items():
        if key.startswith("ENROOT_"):
            raise CondastackError(f"variable {key} of layer '{spec.layer}': enroot drops every ENROOT_* name from "
                                  "an image's environment. Rename it.")
        lines.append(quoting.enroot_env(key, value))
    return "\n".join(lines) + "\n"


def _profile_script(spec: ContainerSpec) -> str:
    """/etc/profile.d/condastack.sh: enroot starts its shell as a login shell (ENROOT_LOGIN_SHELL, on by
    default), and Debian's /etc/profile then sets PATH anew; this puts the env's bin/ back first (and the
    other variables), for enroot's /etc/rc and for what pyxis reads as each task's environment."""
    lines = [f"# The environment of layer '{spec.layer}' (condastack): enroot's login shell reads /etc/profile, "
             "which resets PATH."]
    for key, value in spec.env(DEFAULT_PATH).items():
        if key == "PATH":
            lines.append(f'case ":$PATH:" in *":{spec.prefix}/bin:"*) ;; *) PATH="{spec.prefix}/bin:$PATH" ;; esac')
            lines.append("export PATH")
        else:
            lines.append(f"export {key}={quoting.sh(value, 'variable ' + key)}")
    return "\n".join(lines) + "\n"


def _enroot_rc(spec: ContainerSpec) -> str:
    """/etc/rc as `enroot import` writes it (docker::configure): labels as comments, then the command."""
    labels = "".join(quoting.sh_comment(f"{k} {v}") + "\n" for k, v in spec.labels.items())
    default = " ".join(quoting.sh(c, "command") for c in spec.command) if spec.command else "/bin/sh"
    return f"""{labels}
mkdir -p "/" 2> /dev/null
cd "/" && unset OLDPWD || exit 1

if [ -s /etc/rc.local ]; then
    . /etc/rc.local
fi

if [ $# -gt 0 ]; then
    exec "$@"
else
    exec {default}
fi
"""


_RC_LOCAL = """# This file is sourced by /etc/rc when the container starts.
# It can be used to manipulate the entrypoint or the command of the container.
"""


_SH = "#!/bin/sh\n"


# What `apptainer build` writes as 99-base.sh: the folder `--nv` binds the driver's libraries into.
_SINGULARITY_99_BASE = _SH + """if [ -z "${LD_LIBRARY_PATH:-}" ]; then
    LD_LIBRARY_PATH="/.singularity.d/libs"
else
    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs"
fi
if [ -z "${PS1:-}" ]; then
    PS1="Apptainer> "
fi
export LD_LIBRARY_PATH PS1
"""


# What `apptainer build` writes as 99-runtimevars.sh: `--env PATH=...` and friends (the runtime
# serves its own copy of this file, older Singularity runtimes read this one).
_SINGULARITY_RUNTIMEVARS = _SH + """if [ -n "${SING_USER_DEFINED_PREPEND_PATH:-}" ]; then
    PATH="${SING_USER_DEFINED_PREPEND_PATH}:${PATH}"
fi
if [ -n "${SING_USER_DEFINED_APPEND_PATH:-}" ]; then
    PATH="${PATH}:${SING_USER_DEFINED_APPEND_PATH}"
fi
if [ -n "${SING_USER_DEFINED_PATH:-}" ]; then
    PATH="${SING_USER_DEFINED_PATH}"
fi
unset SING_USER_DEFINED_PREPEND_PATH SING_USER_DEFINED_APPEND_PATH SING_USER_DEFINED_PATH
export PATH
"""


# The action scripts older Singularity runtimes execute (Apptainer runs its embedded copy).
_ACTION = _SH + """for script in /.singularity.d/env/*.sh; do
    if [ -f "$script" ]; then
        . "$script"
    fi
done
"""
_ACTIONS = {"exec": 'exec "$@"', "run": 'exec /.singularity.d/runscript "$@"',
            "shell": 'if [ -x /bin/bash ]; then exec /bin/bash --norc "$@"; fi\nexec /bin/sh "$@"',
            "start": 'exec /.singularity.d/startscript "$@"', "test": "exit 0"}


def labels_record(spec: ContainerSpec) -> dict[str, object]:
    """condastack's record inside the image (/etc/condastack/labels.json)."""
    return {"labels": spec.labels, "stack": spec.stack_name, "layer": spec.layer, "platform": spec.platform,
            "prefix": spec.prefix, "lock_hash": spec.archive.lock_hash,
            "archive": {"name": spec.archive.path.name, "sha256": spec.archive.sha256},
            "environment": spec.env(DEFAULT_PATH)}


def image_files(spec: ContainerSpec, definition: str) -> list[ImageFile]:
    """Every file the runtimes read, as it goes into the image (`definition`: the Apptainer definition text)."""
    env_sh = f"{_SH}# The environment of layer '{spec.layer}' (condastack).\n{apptainer_environment(spec)}\n"
    runscript = f"{_SH}# `apptainer run IMAGE prog args` runs prog from the env.\n{apptainer_runscript(spec)}\n"
    files = [
        ImageFile("etc/environment", _enroot_environment(spec).encode()),
        ImageFile("etc/rc", _enroot_rc(spec).encode()),
        ImageFile("etc/rc.local", _RC_LOCAL.encode()),
        ImageFile("etc/profile.d/condastack.sh", _profile_script(spec).encode()),
        ImageFile(CONDASTACK_LABELS, (json.dumps(labels_record(spec), indent=2, sort_keys=True) + "\n").encode()),
        ImageFile(".singularity.d/Singularity", definition.encode()),
        ImageFile(".singularity.d/labels.json", json.dumps(spec.labels, indent="\t").encode()),
        ImageFile(".singularity.d/runscript", runscript.encode(), 0o755),
        ImageFile(".singularity.d/startscript", _SH.encode(), 0o755),
        ImageFile(".singularity.d/env/01-base.sh", _SH.encode(), 0o755),
        ImageFile(".singularity.d/env/90-environment.sh", env_sh.encode(), 0o755),
        ImageFile(".singularity.d/env/99-base.sh", _SINGULARITY_99_BASE.encode(), 0o755),
        ImageFile(".singularity.d/env/99-runtimevars.sh", _SINGULARITY_RUNTIMEVARS.encode(), 0o755),
        ImageFile("singularity", link=".singularity.d/runscript"),
        ImageFile("environment", link=".singularity.d/env/90-environment.sh"),
    ]
    files += [ImageFile(f".singularity.d/actions/{name}", (_ACTION + body + "\n").encode(), 0o755)
              for name, body in _ACTIONS.items()]
    return files


# Folders the image must have (empty ones too): `--nv` binds into libs/.
IMAGE_DIRS = (".singularity.d/libs", ".singularity.d/actions", ".singularity.d/env", "etc/condastack")


def inspect_metadata(spec: ContainerSpec, definition: str) -> dict[str, object]:
    """What `apptainer inspect` reads from a SIF's "inspect-metadata.json" object (pkg/inspect.Metadata)."""
    files = {f.path: f.data.decode() for f in image_files(spec, definition) if f.link is None}
    env = {name.rsplit("/", 1)[1]: text for name, text in files.items() if name.startswith(".singularity.d/env/")}
    return {"data": {"attributes": {"environment": env, "labels": spec.labels,
                                    "runscript": files[".singularity.d/runscript"], "deffile": definition}},
            "type": "container"}
