"""The loopback index that serves pip --find-links targets to the PyPI solver."""

from __future__ import annotations

import socket
import urllib.parse
from pathlib import Path

import pytest

from condastack.lock.findlinks import find_links_index


def test_a_client_hanging_up_mid_download_prints_nothing(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    wheel = tmp_path / "big-1.0-py3-none-any.whl"
    wheel.write_bytes(b"\0" * (8 << 20))  # larger than the socket buffers, so the server is mid-write
    with find_links_index([tmp_path.as_uri()]) as (index, served):
        (url,) = served
        parts = urllib.parse.urlsplit(url)
        with socket.create_connection((parts.hostname, parts.port)) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # close with a reset
            s.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert s.recv(64).startswith(b"HTTP/1.0 200")
        assert index
    out, err = capfd.readouterr()
    assert "Traceback" not in err and "Error" not in err, err
