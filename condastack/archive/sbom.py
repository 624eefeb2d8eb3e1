"""The SBOM of an archive: its `ARCHIVE.cdx.json` sidecar, else the copy inside it (`conda-meta/condastack.cdx`).

The SBOM itself is made from an env (`condastack.env.sbom`); pack writes both copies.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from condastack.core.errors import CondastackError
from condastack.core.layout import sidecar
from condastack.env.prefix import SBOM_FILE
from condastack.env.sbom import validate_sbom


def _member(archive: Path) -> str:
    """The SBOM inside the archive, read with `unsquashfs -cat` or GNU tar (which detects the compression)."""
    squash = _is_squashfs(archive)
    cmd = ["unsquashfs", "-cat", str(archive), SBOM_FILE] if squash else ["tar", "-xOf", str(archive), SBOM_FILE]
    if shutil.which(cmd[0]) is None:
        raise CondastackError(f"{archive}: reading its SBOM needs `{cmd[0]}` on PATH.")
    p = subprocess.run(cmd, capture_output=True, check=False)
    if p.returncode != 0 or not p.stdout:
        raise CondastackError(f"{archive}: holds no SBOM ({SBOM_FILE}) and has no {sidecar(archive, 'sbom').name} "
                              "beside it; it was packed by an older condastack. Pack it again.")
    return p.stdout.decode(errors="replace")


def _is_squashfs(archive: Path) -> bool:
    with open(archive, "rb") as f:
        return f.read(4) == b"hsqs"


def archive_sbom(archive: Path) -> str:
    """The SBOM of ARCHIVE as CycloneDX JSON text, checked against the CycloneDX schema."""
    archive = Path(archive)
    if not archive.is_file():
        raise CondastackError(f"{archive}: no such archive.")
    side = sidecar(archive, "sbom")
    try:
        text = side.read_text() if side.is_file() else _member(archive)
    except OSError as e:
        raise CondastackError(f"{side}: unreadable ({e.strerror}).") from None
    validate_sbom(text, str(side if side.is_file() else f"{archive}:{SBOM_FILE}"))
    return text


__all__ = ["archive_sbom"]
