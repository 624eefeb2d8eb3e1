"""Reference writer for the minimal SIF described in SIF-FORMAT.md (checked with Debian's siftool 2.8.3).

    python sif_reference.py OUT.sif DEFFILE LABELS.json ROOTFS.sqsh [--deterministic]

Not project code: it is the byte-level spec as a runnable check. It writes, like Apptainer's
`apptainer build` (github.com/apptainer/sif/v2 v2.11.5, pkg/sif/create.go):
  descriptor 1: Def.FILE          (0x4001), group 1
  descriptor 2: JSON.Labels       (0x4003), group 1
  descriptor 3: JSON.Generic      (0x4006), group 1, name "inspect-metadata.json" (what `apptainer inspect` reads)
  descriptor 4: FS partition      (0x4004), group 1, Squashfs / primary system / amd64, 4096-aligned
"""

from __future__ import annotations

import json
import struct
import sys
import uuid
from pathlib import Path

HEADER = struct.Struct("<32s10s3s3s16sqqqqqqqq")  # 128 bytes
DESCR = struct.Struct("<i?IIIqqqqqqq128s384s")  # 585 bytes, no padding (Go encoding/binary)
assert HEADER.size == 128 and DESCR.size == 585

DESCR_OFFSET = 4096
CAPACITY = 48
DATA_OFFSET = DESCR_OFFSET + CAPACITY * DESCR.size  # 32176
GROUP_MASK = 0xF0000000
DATA_DEFFILE, DATA_LABELS, DATA_PARTITION, DATA_GENERICJSON = 0x4001, 0x4003, 0x4004, 0x4006
FS_SQUASH, PART_PRIMSYS = 1, 2
ARCH_AMD64 = b"02\0"


def align(n: int, a: int) -> int:
    return n if a == 0 or n % a == 0 else (n // a + 1) * a


def write_sif(out: Path, objects: list[tuple[int, bytes, str, bytes, int]], t: int, image_id: bytes,
              arch: bytes) -> None:
    """objects: (datatype, payload, name, extra, alignment)."""
    descrs = []
    body = bytearray()
    end = DATA_OFFSET  # offset just past the last object
    for i, (dtype, payload, name, extra, alignment) in enumerate(objects, start=1):
        off = align(end, alignment)
        body += b"\0" * (off - end) + payload
        descrs.append(DESCR.pack(dtype, True, i, 1 | GROUP_MASK, 0, off, len(payload), off - end + len(payload),
                                 t, t, 0, 0, name.encode(), extra))
        end = off + len(payload)
    descrs += [b"\0" * DESCR.size] * (CAPACITY - len(objects))
    header = HEADER.pack(b"#!/usr/bin/env run-singularity\n", b"SIF_MAGIC\0", b"01\0", arch, image_id, t, t,
                         CAPACITY - len(objects), CAPACITY, DESCR_OFFSET, CAPACITY * DESCR.size, DATA_OFFSET,
                         end - DATA_OFFSET)
    with open(out, "wb") as f:
        f.write(header + b"\0" * (DESCR_OFFSET - HEADER.size) + b"".join(descrs) + body)


def main() -> None:
    out, deffile, labels, squash = (Path(a) for a in sys.argv[1:5])
    deterministic = "--deterministic" in sys.argv
    t = 0 if deterministic else int(Path(squash).stat().st_mtime)
    image_id = (uuid.UUID(int=0) if deterministic else uuid.uuid4()).bytes
    labels_obj = json.loads(labels.read_text())
    inspect = {"data": {"attributes": {"labels": labels_obj, "deffile": deffile.read_text()}}, "type": "container"}
    part_extra = struct.pack("<ii3s", FS_SQUASH, PART_PRIMSYS, ARCH_AMD64)
    write_sif(out, [
        (DATA_DEFFILE, deffile.read_bytes(), "", b"", 0),
        (DATA_LABELS, json.dumps(labels_obj, indent="\t").encode(), "", b"", 0),
        (DATA_GENERICJSON, json.dumps(inspect, separators=(",", ":")).encode(), "inspect-metadata.json", b"", 0),
        (DATA_PARTITION, squash.read_bytes(), "", part_extra, 4096),
    ], t, image_id, ARCH_AMD64)


if __name__ == "__main__":
    main()
