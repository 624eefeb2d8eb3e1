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

import os
from pathlib import Path

from condastack.container.spec import LABEL_NS, ContainerSpec, pack_command
from condastack.core import quoting
from condastack.core.errors import CondastackError
from condastack.core.names import is_digest

DOCKERFILE = "Dockerfile.thin"


# --------------------------------------------------------------------------- inputs


# --------------------------------------------------------------------------- base image


# --------------------------------------------------------------------------- Dockerfile


def _need_gzip(spec: ContainerSpec) -> None:
    if spec.archive.fmt != "tar.gz":
        raise CondastackError(
            f"{spec.archive.path}: Dockerfile.thin and the Apptainer definition extract a gzip archive only "
            f"(Docker's ADD and the base image's tar cannot read {spec.archive.fmt}). "
            f"Run `{pack_command(spec.layer, spec.prefix)}` (--oci alone reads {spec.archive.fmt})."
        )


_RUN_LABELS = (f"{LABEL_NS}.lock-hash", f"{LABEL_NS}.archive-sha256")

# Stands for the base image's PATH in spec.env(); each writer spells "the PATH before" its own way.
_BASE_PATH = "\x00BASE_PATH\x00"


def _env_items(spec: ContainerSpec) -> list[tuple[str, str, bool]]:
    """(name, value, ends with the base PATH) for every variable the image sets; names checked."""
    out = []
    for k, v in spec.env(_BASE_PATH).items():
        quoting.check_name("variable", k)
        tail = v.endswith(_BASE_PATH)
        out.append((k, v[: -len(_BASE_PATH)] if tail else v, tail))
    return out


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
    cmd = list(spec.command) or ["/bin/sh"]
    df = os.path.relpath(Path(dockerfile).resolve(), Path(context).resolve()) if dockerfile else DOCKERFILE
    # Only what the stack decides: the lock hash and the archive's sha256 change with every channel
    # and re-pack, and a committed Dockerfile should not (they are in the image's ADDed files,
    # the archive's .sha256 sidecar, the Apptainer definition and the OCI config).
    labels = " \\\n      ".join(f"{k}={quoting.docker_value(v, 'label ' + k)}"
                                  for k, v in spec.labels.items() if k not in _RUN_LABELS)
    items = _env_items(spec)
    envs = " \\\n    ".join(f"{k}={quoting.docker_value(v, 'variable ' + k)}" for k, v, tail in items if not tail)
    # A variable that extends the base image's value ($PATH) gets an ENV of its own: within one ENV
    # instruction `$PATH` means the value before it, which readers (and hadolint DL3044) find surprising.
    extend = [f"ENV {k}={quoting.docker_value(v, 'variable ' + k)[:-1]}${k}\"" for k, v, tail in items if tail]
    c = quoting.sh_comment
    return "\n".join([
        c(f"Thin container for layer '{spec.layer}' of stack '{spec.stack_name}' ({spec.platform})."),
        "# Written by `condastack container`; regenerate it instead of editing it.",
        c(f"The archive comes from `{pack_command(spec.layer, spec.prefix)}`."),
        c(f"Build in the project folder (the context):  docker build -f {df} -t {spec.stack_name}-{spec.layer} ."),
        f"FROM {quoting.image_ref(spec.base_image)}",
        "",
        f"LABEL {labels}",
        "",
        "# ADD extracts the local gzip tar at the prefix; the archive itself stays out of the image,",
        "# and nothing else (no conda, no compiler) is installed.",
        f"ADD {quoting.docker_path(src, 'archive path')} {quoting.docker_path(spec.prefix + '/', 'prefix')}",
        "",
        *extend,
        f"ENV {envs}",
        "",
        f"USER {quoting.docker_user(spec.user)}",
        "WORKDIR /tmp",
        f"CMD {quoting.docker_json(cmd)}",
    ]) + "\n"


# --------------------------------------------------------------------------- Apptainer


# Apptainer's local bootstrap agents: `--base-image oci:DIR:TAG` gives `Bootstrap: oci` / `From: DIR:TAG`,
# so a definition can be built with no registry (a site mirror's layout, or condastack's Debian base).
APPTAINER_LOCAL_AGENTS = ("oci", "oci-archive", "docker-archive", "localimage")


def apptainer_bootstrap(base_image: str) -> str:
    """The definition's header lines for a base image: a registry image, or a local one as AGENT:PATH."""
    agent, sep, rest = base_image.partition(":")
    if sep and agent in APPTAINER_LOCAL_AGENTS and rest:
        return f"Bootstrap: {agent}\nFrom: {quoting.apptainer_word(rest, 'base image path')}"
    return f"Bootstrap: docker\nFrom: {quoting.image_ref(base_image)}"


def apptainer_environment(spec: ContainerSpec) -> str:
    """The lines of %environment, and of /.singularity.d/env/90-environment.sh in a written image: one line
    per variable, no value spans lines (a '%' line would open a section); PATH extends the runtime's."""
    lines = [quoting.SH_NEWLINE_SETUP]
    for k, v, tail in _env_items(spec):
        word = quoting.sh_one_line(v, "variable " + k) + ('"$PATH"' if tail else "")
        lines.append(f"export {k}={word}")
    lines.append(quoting.SH_NEWLINE_TEARDOWN)
    return "\n".join(lines)


def apptainer_runscript(spec: ContainerSpec) -> str:
    """The body of %runscript: `apptainer run IMAGE prog args` runs prog; no arguments runs the image's
    command (--command), else a shell."""
    default = " ".join(quoting.sh(c, "command") for c in spec.command) if spec.command else "/bin/sh"
    return f'if [ "$#" -eq 0 ]; then exec {default}; fi\nexec "$@"'


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def render_apptainer(spec: ContainerSpec, def_dir: Path, *, bootstrap: str | None = None,
                     extract: str = "tar -xzf") -> str:
    """An Apptainer definition from the same base; %files paths are relative to `def_dir`.

    `bootstrap` replaces the header lines (the image writer records its debootstrap base there), and
    `extract` the command that unpacks the archive (`tar -xf` reads any format tar has a program for)."""
    if extract == "tar -xzf":
        _need_gzip(spec)
    src = quoting.apptainer_word(os.path.relpath(spec.archive.path.resolve(), Path(def_dir).resolve()),
                                 "archive path")
    staged = f"/tmp/condastack-{quoting.check_name('layer', spec.layer)}.{spec.archive.fmt}"
    labels = "\n".join(f"    {quoting.apptainer_label(k, v)}" for k, v in spec.labels.items())
    sha = spec.archive.sha256
    if not is_digest("sha256", sha):
        raise CondastackError(f"{spec.archive.path}: its sha256 {sha[:80]!r} is not 64 hex digits; re-pack it.")
    pfx = quoting.sh_one_line(spec.prefix, "prefix")
    t = quoting.text_line
    return f"""\
{quoting.sh_comment(f"Apptainer definition for layer '{spec.layer}' of stack '{spec.stack_name}' ({spec.platform}).")}
# Written by `condastack container`. Build it from the folder that holds this file:
{quoting.sh_comment(f"  apptainer build {spec.stack_name}-{spec.layer}.sif {spec.layer}.def")}
{bootstrap or apptainer_bootstrap(spec.base_image)}

%files
    {src} {staged}

%post
    echo "{sha}  {staged}" | sha256sum -c -
    mkdir -p {pfx}
    {extract} {staged} -C {pfx} --no-same-owner
    rm -f {staged}
    chmod -R a+rX {pfx}

%environment
{_indent(apptainer_environment(spec))}

%labels
{labels}

%runscript
    # `apptainer run IMAGE prog args` runs prog from the env; no arguments gives a shell.
{_indent(apptainer_runscript(spec))}

%help
    {t(f"Layer '{spec.layer}' of '{spec.stack_name}' at {spec.prefix} (lock {spec.archive.lock_hash}).")}
"""


# --------------------------------------------------------------------------- OCI archive


# --------------------------------------------------------------------------- the command


