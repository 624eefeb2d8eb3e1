"""A SIF (Singularity Image Format) file written in plain Python: no Apptainer on the build machine.

The layout is that of github.com/apptainer/sif/v2 (pkg/sif: sif.go, descriptor.go, create.go), which
`apptainer build` uses, all little-endian and packed as Go's encoding/binary writes structs:

- the global header (128 bytes) at 0: launch script [32], "SIF_MAGIC\\0" [10], version "01\\0" [3],
  primary architecture [3] ("02\\0" amd64, "04\\0" arm64, "06\\0" ppc64le), image ID (UUID) [16], then
  int64 created, modified, free descriptors, total descriptors, descriptors offset, descriptors size,
  data offset, data size;
- 48 descriptors (585 bytes each) at 4096: int32 data type, bool used, uint32 ID, group ID
  (0xf0000000 | group), linked ID, int64 offset, size, size with padding, created, modified, UID, GID,
  name [128], type-specific extra [384] (a partition's: int32 file system, int32 partition type,
  architecture [3]);
- the data objects from 4096 + 48 * 585, each at the next offset its alignment allows (a partition at
  a multiple of 4096, so it can be loop-mounted at its offset); "size with padding" counts the gap
  before it.

Objects written: the definition (Def.FILE), the labels (JSON.Labels), `inspect-metadata.json`
(JSON.Generic: what `apptainer inspect` reads without mounting) and the SquashFS as the primary system
partition, as `apptainer build` orders them. Reproducible: the times are $SOURCE_DATE_EPOCH (default 0)
and the image ID is derived from the contents.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from condastack.container.imagefiles import inspect_metadata
from condastack.container.spec import ContainerSpec
from condastack.container.sqsh import source_date_epoch
from condastack.core.errors import CondastackError
from condastack.core.fs import atomic_path, sha256_file
from condastack.core.platforms import OCI_ARCH

HEADER = struct.Struct("<32s10s3s3s16sqqqqqqqq")
DESCRIPTOR = struct.Struct("<i?IIIqqqqqqq128s384s")
PARTITION_EXTRA = struct.Struct("<ii3s")
LAUNCH_SCRIPT = b"#!/usr/bin/env run-singularity\n"
MAGIC = b"SIF_MAGIC\0"
VERSION = b"01\0"
DESCRIPTORS_OFFSET = 4096
CAPACITY = 48
DATA_OFFSET = DESCRIPTORS_OFFSET + CAPACITY * DESCRIPTOR.size
GROUP_MASK = 0xF0000000
DEFAULT_GROUP = 1

# Data object types (pkg/sif DataType) and partition fields.
DATA_DEFFILE, DATA_LABELS, DATA_PARTITION, DATA_GENERIC_JSON = 0x4001, 0x4003, 0x4004, 0x4006
FS_SQUASH = 1
PART_PRIMSYS = 2
PARTITION_ALIGNMENT = 4096
INSPECT_METADATA = "inspect-metadata.json"

# Go architecture names (OCI_ARCH's values) to SIF's.
SIF_ARCH = {"386": b"01\0", "amd64": b"02\0", "arm": b"03\0", "arm64": b"04\0", "ppc64": b"05\0",
            "ppc64le": b"06\0", "s390x": b"11\0", "riscv64": b"12\0"}

assert HEADER.size == 128 and DESCRIPTOR.size == 585


@dataclass(frozen=True)
class SifObject:
    """One data object: its bytes, or a file streamed into the image (`path`)."""

    dtype: int
    data: bytes = b""
    path: Path | None = None
    name: str = ""
    extra: bytes = b""
    alignment: int = 0

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path is not None else len(self.data)


@dataclass(frozen=True)
class SifResult:
    path: Path
    sha256: str
    size: int
    image_id: str
    partition_offset: int


def _aligned(offset: int, alignment: int) -> int:
    return offset if alignment <= 0 or offset % alignment == 0 else offset + alignment - offset % alignment


def _fixed(value: bytes, size: int, what: str) -> bytes:
    if len(value) > size:
        raise CondastackError(f"SIF {what} is {len(value)} bytes; the format allows {size}.")
    return value


def write_sif(output: Path, objects: list[SifObject], *, arch: bytes, created: int, image_id: uuid.UUID) -> SifResult:
    """Write a SIF holding `objects` in this order (IDs 1, 2, ...), all in group 1."""
    if len(objects) > CAPACITY:
        raise CondastackError(f"a SIF holds at most {CAPACITY} objects, not {len(objects)}.")
    placed: list[tuple[SifObject, int, bytes]] = []
    end = DATA_OFFSET
    for i, obj in enumerate(objects, start=1):
        offset, size = _aligned(end, obj.alignment), obj.size
        descr = DESCRIPTOR.pack(obj.dtype, True, i, DEFAULT_GROUP | GROUP_MASK, 0, offset, size, offset - end + size,
                                created, created, 0, 0, _fixed(obj.name.encode(), 128, "object name"),
                                _fixed(obj.extra, 384, "descriptor extra"))
        placed.append((obj, offset, descr))
        end = offset + size
    descriptors = b"".join(d for _, _, d in placed) + bytes(DESCRIPTOR.size) * (CAPACITY - len(objects))
    header = HEADER.pack(LAUNCH_SCRIPT, MAGIC, VERSION, arch, image_id.bytes, created, created,
                         CAPACITY - len(objects), CAPACITY, DESCRIPTORS_OFFSET, CAPACITY * DESCRIPTOR.size,
                         DATA_OFFSET, end - DATA_OFFSET)
    with atomic_path(Path(output)) as tmp, open(tmp, "wb") as f:
        f.write(header.ljust(DESCRIPTORS_OFFSET, b"\0") + descriptors)
        for obj, offset, _ in placed:
            f.write(bytes(offset - f.tell()))
            if obj.path is not None:
                with open(obj.path, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 20)
            else:
                f.write(obj.data)
        if f.tell() != end:
            raise CondastackError(f"{output}: an object changed size while the SIF was written; write it again.")
        f.flush()
    out = Path(output)
    partition_offset = next((o for obj, o, _ in placed if obj.dtype == DATA_PARTITION), 0)
    return SifResult(path=out, sha256=sha256_file(out), size=out.stat().st_size, image_id=str(image_id),
                     partition_offset=partition_offset)


def write_image_sif(spec: ContainerSpec, output: Path, squashfs: Path, definition: str,
                    squashfs_sha256: str | None = None) -> SifResult:
    """The SIF of a written image: `definition`, the labels, the inspect metadata and `squashfs`."""
    arch = SIF_ARCH[OCI_ARCH[spec.platform]]
    with open(squashfs, "rb") as f:
        if f.read(4) != b"hsqs":
            raise CondastackError(f"{squashfs}: not a SquashFS image (no hsqs magic).")
    labels = json.dumps(spec.labels, indent="\t", sort_keys=True).encode()
    inspect = json.dumps(inspect_metadata(spec, definition), separators=(",", ":"), sort_keys=True).encode()
    objects = [
        SifObject(DATA_DEFFILE, definition.encode()),
        SifObject(DATA_LABELS, labels),
        SifObject(DATA_GENERIC_JSON, inspect, name=INSPECT_METADATA),
        SifObject(DATA_PARTITION, path=Path(squashfs), alignment=PARTITION_ALIGNMENT,
                  extra=PARTITION_EXTRA.pack(FS_SQUASH, PART_PRIMSYS, arch)),
    ]
    digest = hashlib.sha256(definition.encode() + labels + inspect)
    digest.update((squashfs_sha256 or sha256_file(Path(squashfs))).encode())
    image_id = uuid.UUID(bytes=digest.digest()[:16], version=5)  # name-based: equal contents, equal ID
    return write_sif(output, objects, arch=arch, created=source_date_epoch(), image_id=image_id)
