"""Fuzz the archive header reader (`unpack._filter_stream`): whatever the bytes, it forwards the stream
or refuses it (`_Refused`, which `unpack` turns into exit 1); it never raises anything else and never
loops (each example runs in a thread that must finish within a generous bound).

Inputs are real tar streams (ustar, GNU and pax, with long names, links and pax records) that
hypothesis then corrupts: bytes overwritten in headers and pax bodies, pax records of any shape,
truncation.
"""

from __future__ import annotations

import io
import os
import tarfile
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from condastack.archive.targuard import _filter_stream, _Guard, _pax, _Refused

names = st.sampled_from(["a", "dir/b", "x" * 120, "d/" * 60 + "f", "../up", "/abs", "ok/./c", "é/ü"])
kinds = st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE])
formats = st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])


@st.composite
def tar_streams(draw: st.DrawFn) -> bytes:
    buf = io.BytesIO()
    fmt = draw(formats)
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for _ in range(draw(st.integers(1, 4))):
            ti = tarfile.TarInfo(draw(names))
            ti.type = draw(kinds)
            ti.linkname = draw(names) if ti.type in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            data = draw(st.binary(max_size=700)) if ti.type == tarfile.REGTYPE else b""
            ti.size = len(data)
            if fmt == tarfile.PAX_FORMAT and draw(st.booleans()):
                ti.pax_headers = {draw(st.sampled_from(["path", "size", "linkpath", "GNU.sparse.realsize",
                                                        "GNU.sparse.name", "comment"])):
                                  draw(st.text(max_size=30))}
            try:
                tf.addfile(ti, io.BytesIO(data))
            except (ValueError, tarfile.TarError, UnicodeError):
                pass
    data = bytearray(buf.getvalue())
    for _ in range(draw(st.integers(0, 6))):  # corrupt: headers are in the first bytes of each block
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        chunk = draw(st.binary(min_size=1, max_size=16))
        data[at:at + len(chunk)] = chunk
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


def _run(data: bytes, guard: _Guard) -> BaseException | None:
    src_r, src_w = os.pipe()
    dst = os.open(os.devnull, os.O_WRONLY)
    result: list[BaseException | None] = [None]

    def feed() -> None:
        try:
            os.write(src_w, data) if len(data) < 60000 else [os.write(src_w, data[i:i + 4096])
                                                               for i in range(0, len(data), 4096)]
        except OSError:
            pass
        finally:
            os.close(src_w)

    def read() -> None:
        try:
            _filter_stream(src_r, dst, guard)
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            result[0] = e

    w = threading.Thread(target=feed, daemon=True)
    r = threading.Thread(target=read, daemon=True)
    w.start()
    r.start()
    r.join(30)
    assert not r.is_alive(), "the header reader did not finish (a loop)"
    os.close(src_r)
    os.close(dst)
    w.join(5)
    return result[0]


@settings(max_examples=300, deadline=None)
@given(data=tar_streams(), max_bytes=st.sampled_from([None, 0, 100, 10_000]))
def test_fuzz_header_reader(data: bytes, max_bytes: int | None) -> None:
    guard = _Guard(None, max_bytes)
    err = _run(data, guard)
    assert err is None or isinstance(err, _Refused), repr(err)
    if max_bytes is not None and err is None:
        assert guard.bytes <= max_bytes


@settings(max_examples=500, deadline=None)
@given(body=st.one_of(
    st.binary(max_size=200),
    st.lists(st.tuples(st.integers(-5, 300), st.sampled_from(["path", "size", "", "a=b", "x"]),
                       st.text(max_size=20), st.booleans()), max_size=5).map(
        lambda recs: b"".join(f"{n} {k}={v}{chr(10) if nl else ''}".encode() for n, k, v, nl in recs))))
def test_fuzz_pax_records(body: bytes) -> None:
    """The pax record parser: a dict or a refusal, for any body (a zero length used to loop forever)."""
    try:
        out = _pax(body)
    except _Refused:
        return
    assert isinstance(out, dict)
