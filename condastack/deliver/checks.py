"""What a node check is made of: the node as detected (GPUs, virtual packages) and one check's verdict.
Shared by doctor and its torch checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["pass", "fail", "warn"]


@dataclass
class Check:
    name: str
    status: Status
    required: str
    found: str
    fix: str = ""


@dataclass
class Gpu:
    name: str
    driver_version: str
    compute_cap: str
    memory_total: str


@dataclass
class Node:
    hostname: str
    platform: str
    virtual_packages: dict[str, str]  # __name -> version (after overrides)
    overridden: list[str]  # names set by CONDA_OVERRIDE_* variables
    gpus: list[Gpu]
    driver: str | None  # why we believe a driver is (not) present
    nvidia_smi_error: str | None = None


