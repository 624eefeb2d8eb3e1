"""Thin containers without Docker: Dockerfile.thin, an Apptainer definition, an OCI archive.

A thin container is a small base image plus one packed environment at a
fixed prefix. The environment comes from a `--dest-prefix` archive made by
`condastack pack`, so its placeholders already hold the container prefix and
nothing has to run inside the image but `tar`: no conda, no micromamba, no
compilers. The OCI archive is written here in plain Python (tar + sha256 +
JSON), with the environment as one gzip layer on top of an optional base
image given as a local OCI layout; no daemon, skopeo or umoci is needed to
make it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

from condastack.container.spec import LABEL_NS, ContainerSpec, pack_command
from condastack.core.errors import CondastackError

DOCKERFILE = "Dockerfile.thin"


# --------------------------------------------------------------------------- inputs


# --------------------------------------------------------------------------- base image


# --------------------------------------------------------------------------- Dockerfile


_PLAIN = re.compile(r"[\w/.:$+@%,-]*")  # an ENV value Docker reads as written, unquoted


def _q(value: str) -> str:
    return json.dumps(value)


def _need_gzip(spec: ContainerSpec) -> None:
    if spec.archive.fmt != "tar.gz":
        raise CondastackError(
            f"{spec.archive.path}: Dockerfile.thin and the Apptainer definition extract a gzip archive only "
            f"(Docker's ADD and the base image's tar cannot read {spec.archive.fmt}). "
            f"Run `{pack_command(spec.layer, spec.prefix)}` (--oci alone reads {spec.archive.fmt})."
        )


_RUN_LABELS = (f"{LABEL_NS}.lock-hash", f"{LABEL_NS}.archive-sha256")


def render_dockerfile(spec: ContainerSpec, context: Path, dockerfile: Path | None = None) -> str:
    """Dockerfile.thin: FROM base, ADD (extract) the archive at the prefix, env, labels, non-root USER.

    `context` is the docker build context (the project folder); the archive must lie inside it.
    """
    _need_gzip(spec)
    try:
        src = spec.archive.path.resolve().relative_to(Path(context).resolve()).as_posix()
    except ValueError:
        raise CondastackError(
            f"{spec.archive.path}: the archive must lie inside the build context {context} (put it under pack/)."
        ) from None
    env = spec.env("$PATH")
    cmd = list(spec.command) or ["/bin/sh"]
    df = os.path.relpath(Path(dockerfile).resolve(), Path(context).resolve()) if dockerfile else DOCKERFILE
    # Only what the stack decides: the lock hash and the archive's sha256 change with every channel
    # and re-pack, and a committed Dockerfile should not (they are in the image's ADDed files,
    # the archive's .sha256 sidecar, the Apptainer definition and the OCI config).
    labels = " \\\n      ".join(f"{k}={_q(v)}" for k, v in spec.labels.items() if k not in _RUN_LABELS)
    envs = " \\\n    ".join(f"{k}={v if _PLAIN.fullmatch(v) else _q(v)}" for k, v in env.items())
    return f"""\
# Thin container for layer '{spec.layer}' of stack '{spec.stack_name}' ({spec.platform}).
# Written by `condastack container`; regenerate it instead of editing it.
# The archive comes from `{pack_command(spec.layer, spec.prefix)}`.
# Build in the project folder (the context):  docker build -f {df} -t {spec.stack_name}-{spec.layer} .
FROM {spec.base_image}

LABEL {labels}

# ADD extracts the local gzip tar at the prefix; the archive itself stays out of the image,
# and nothing else (no conda, no compiler) is installed.
ADD {src} {spec.prefix}/

ENV {envs}

USER {spec.user}
WORKDIR /tmp
CMD {json.dumps(cmd)}
"""


# --------------------------------------------------------------------------- Apptainer


def render_apptainer(spec: ContainerSpec, def_dir: Path) -> str:
    """An Apptainer definition from the same base; %files paths are relative to `def_dir`."""
    _need_gzip(spec)
    src = os.path.relpath(spec.archive.path.resolve(), Path(def_dir).resolve())
    staged = f"/tmp/condastack-{spec.layer}.tar.gz"
    user_vars = dict(spec.env_vars)
    env = "\n".join(f"    export {k}={shlex.quote(v)}" if k in user_vars and user_vars[k] == v
                     else f"    export {k}=\"{v}\"" for k, v in spec.env("$PATH").items())
    labels = "\n".join(f"    {k} {v}" for k, v in spec.labels.items())
    return f"""\
# Apptainer definition for layer '{spec.layer}' of stack '{spec.stack_name}' ({spec.platform}).
# Written by `condastack container`. Build it from the folder that holds this file:
#   apptainer build {spec.stack_name}-{spec.layer}.sif {spec.layer}.def
Bootstrap: docker
From: {spec.base_image}

%files
    {src} {staged}

%post
    echo "{spec.archive.sha256}  {staged}" | sha256sum -c -
    mkdir -p {spec.prefix}
    tar -xzf {staged} -C {spec.prefix} --no-same-owner
    rm -f {staged}
    chmod -R a+rX {spec.prefix}

%environment
{env}

%labels
{labels}

%runscript
    # `apptainer run IMAGE prog args` runs prog from the env; no arguments gives a shell.
    if [ "$#" -eq 0 ]; then exec /bin/sh; fi
    exec "$@"

%help
    Layer '{spec.layer}' of '{spec.stack_name}' at {spec.prefix} (lock {spec.archive.lock_hash}).
"""


# --------------------------------------------------------------------------- OCI archive


# --------------------------------------------------------------------------- the command


