"""`condastack doctor`: can this node run the stack (or the installed env)?

The node is read the way conda and rattler read it: virtual packages from
`rattler.VirtualPackage.detect` with the CONDA_OVERRIDE_* variables honoured
(py-rattler ignores them unless given `VirtualPackageOverrides.from_env()`),
GPUs from `nvidia-smi`, free space from statvfs. What is required comes from
the stack's declared virtual packages (LAYER) or from the `depends` of the
packages installed in an env (--prefix).

Imports stay light on purpose (click, rich, pyyaml, py-rattler): doctor runs
first in a job on a compute node that may have nothing else.
"""

from __future__ import annotations

import json
import os
import platform as _platform
import re
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from condastack.core.errors import CondastackError
from condastack.deliver.checks import Check, Gpu, Node
from condastack.deliver.doctor_torch import torch_checks
from condastack.env.prefix import Env
from condastack.spec.stack import load_stack

# Defaults for the space check when no env size is known (a layer, not a prefix).
DEFAULT_MIN_FREE_BYTES = 1_000_000_000
DEFAULT_MIN_FREE_INODES = 10_000
IMPORT_TIMEOUT_S = 120
_MAX_IMPORTS = 40
_NO_DRIVER = "no NVIDIA GPU driver is present on this node"


@dataclass
class Requirements:
    """What the target needs from the node: {virtual package: [(version spec, who needs it)]}."""

    target: str
    kind: Literal["layer", "prefix"]
    specs: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    platform: str | None = None
    lock_hash: str | None = None
    prefix: Path | None = None
    python: Path | None = None
    imports: list[str] = field(default_factory=list)
    need_bytes: int = DEFAULT_MIN_FREE_BYTES
    need_inodes: int = DEFAULT_MIN_FREE_INODES

    def add(self, name: str, spec: str, who: str) -> None:
        self.specs.setdefault(name, []).append((spec, who))


@dataclass
class Report:
    node: Node
    requirements: Requirements
    filesystem: Path
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    @property
    def notes(self) -> list[str]:
        """Plain sentences shown above the table (the table wraps its cells)."""
        out = []
        n = self.node
        if not n.gpus and n.driver is None and "__cuda" not in n.overridden:
            out.append(f"{_NO_DRIVER[0].upper()}{_NO_DRIVER[1:]} ({n.nvidia_smi_error}; no libcuda.so.1, "
                       "no /proc/driver/nvidia/version): this is a CPU-only node.")
        if n.overridden:
            out.append("Overridden by CONDA_OVERRIDE_* variables: " + ", ".join(
                f"{k}={n.virtual_packages.get(k, '(none)')}" for k in n.overridden) + ".")
        return out

    def to_json(self) -> dict[str, Any]:
        req = self.requirements
        return {
            "ok": self.ok,
            "target": {"kind": req.kind, "name": req.target, "platform": req.platform,
                       "lock_hash": req.lock_hash, "prefix": str(req.prefix) if req.prefix else None},
            "node": {**asdict(self.node), "gpus": [asdict(g) for g in self.node.gpus]},
            "filesystem": str(self.filesystem),
            "notes": self.notes,
            "checks": [asdict(c) for c in self.checks],
        }


# --------------------------------------------------------------------------- the node


def detect_virtual_packages() -> tuple[dict[str, str], list[str]]:
    """Virtual packages as conda sees them, CONDA_OVERRIDE_* honoured ('' removes one)."""
    import rattler  # lazy: native, ~0.2 s

    _check_overrides()
    found: dict[str, str] = {}
    for vp in rattler.VirtualPackage.detect(rattler.VirtualPackageOverrides.from_env()):
        g = vp.into_generic()
        name = g.name.normalized
        # __archspec's meaning is in its build string (version is always 1).
        found[name] = str(g.build_string) if name == "__archspec" else str(g.version)
    overridden = [f"__{k.lower()}" for k in ("CUDA", "GLIBC", "OSX", "ARCHSPEC")
                  if f"CONDA_OVERRIDE_{k}" in os.environ]
    return found, overridden


_OVERRIDE_VERSION = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9}){0,3}\Z")


def _check_overrides() -> None:
    """A CONDA_OVERRIDE_* that is no version is the user's mistake: exit 1 naming it (py-rattler would raise)."""
    for k in ("CUDA", "GLIBC", "OSX"):
        value = os.environ.get(f"CONDA_OVERRIDE_{k}")
        if value and not _OVERRIDE_VERSION.match(value):
            raise CondastackError(f"CONDA_OVERRIDE_{k}={ascii(value)[:80]} is not a version such as 12.6; set it to "
                                  "one, or to nothing to say there is none, or unset it.")
    arch = os.environ.get("CONDA_OVERRIDE_ARCHSPEC")
    if arch and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", arch):
        raise CondastackError(f"CONDA_OVERRIDE_ARCHSPEC={ascii(arch)[:80]} is not a microarchitecture name such "
                              "as x86_64_v3 or icelake.")


def _size(value: object) -> int:
    """A record's size_in_bytes as a count; anything else (text, a negative number) counts 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _nvidia_driver_hint() -> str | None:
    proc = Path("/proc/driver/nvidia/version")
    if proc.is_file():
        first = proc.read_text(errors="replace").splitlines()[:1]
        return first[0].strip() if first else str(proc)
    for libdir in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/nvidia/lib64",
                   "/usr/lib/aarch64-linux-gnu"):
        lib = Path(libdir) / "libcuda.so.1"
        if lib.exists():
            return f"{lib} present"
    return None


def detect_gpus() -> tuple[list[Gpu], str | None]:
    """GPUs listed by nvidia-smi, or ([], why not)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return [], "nvidia-smi not found on PATH"
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,driver_version,compute_cap,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, errors="replace", timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return [], f"nvidia-smi failed: {e}"
    if out.returncode != 0:
        return [], f"nvidia-smi exited {out.returncode}: {(out.stderr or out.stdout).strip()[:200]}"
    gpus = []
    for line in out.stdout.splitlines()[:64]:
        # Odd bytes from a broken driver stay readable and bounded in the report.
        parts = [re.sub(r"[\x00-\x1f\x7f]", "?", p.strip())[:100] for p in line.split(",")]
        if len(parts) >= 4:
            gpus.append(Gpu(*parts[:4]))
    return gpus, None


def detect_node() -> Node:
    import rattler  # lazy: native, ~0.2 s

    vps, overridden = detect_virtual_packages()
    gpus, smi_error = detect_gpus()
    return Node(
        hostname=socket.gethostname(),
        platform=str(rattler.Platform.current()),
        virtual_packages=vps,
        overridden=overridden,
        gpus=gpus,
        driver=_nvidia_driver_hint(),
        nvidia_smi_error=smi_error,
    )


# --------------------------------------------------------------------------- requirements


def requirements_for_layer(root: Path, layer: str, platform: str) -> Requirements:
    """A layer needs the node to offer at least the virtual packages its stack declares."""
    vps = _stack_virtual_packages(Path(root), layer, platform)
    req = Requirements(target=layer, kind="layer", platform=platform)
    for name, version in vps.items():
        if name in ("__glibc", "__cuda"):
            req.add(name, f">={version}", "stack.yml virtual-packages")
        elif name == "__cuda_arch":
            req.add(name, f">={version}", "stack.yml virtual-packages")
    return req


def _stack_virtual_packages(root: Path, layer: str, platform: str) -> dict[str, str]:

    # The virtual packages live in stack.yml itself: the layer files' specs are not
    # parsed, so a compute node without conda-lock can answer.
    stack = load_stack(root, parse_specs=False)
    stack.layer(layer)  # raises for an unknown layer
    if platform not in stack.platforms:
        raise CondastackError(
            f"{stack.file}: this node is {platform}, which the stack does not target "
            f"(platforms: {', '.join(stack.platforms)}). Add it to 'platforms' or run on a matching node."
        )
    return stack.virtual_packages_for(platform)


_SITE = re.compile(r"^lib/python\d+\.\d+/site-packages/([A-Za-z_][A-Za-z0-9_]*)(?:/__init__\.py|\.py|\..*\.so)$")


def requirements_for_prefix(prefix: Path) -> Requirements:
    """Requirements of an installed env: virtual-package depends of its packages, its python."""
    prefix = Path(prefix).resolve()
    env = Env(prefix)
    env.require_conda_env(" Pass the prefix given to `condastack install` or `unpack`.")
    req = Requirements(target=str(prefix), kind="prefix", prefix=prefix)
    info = env.marker
    if info is not None:
        req.lock_hash = info.lock_hash
        req.platform = info.platform
        if info.layer:
            req.target = f"{info.layer} ({prefix})"
    size = 0
    files = 0
    modules: list[str] = []
    for rec in env.records.values():
        who = f"{rec.get('name')} {rec.get('version')} {rec.get('build')}"
        deps = rec.get("depends")
        for dep in deps if isinstance(deps, list) else []:
            if not isinstance(dep, str):
                continue  # a damaged record: its other fields still count
            name, _, spec = dep.strip().partition(" ")
            if name in ("__cuda", "__glibc", "__cuda_arch"):
                req.add(name, spec.split()[0] if spec.strip() else "*", who)
        pd = rec.get("paths_data")
        paths = [p for p in (pd.get("paths") if isinstance(pd, dict) else None) or [] if isinstance(p, dict)] \
            if isinstance(pd, dict) and isinstance(pd.get("paths"), list) else []
        size += sum(_size(p.get("size_in_bytes")) for p in paths)
        listed = rec.get("files")
        rel_paths = [r for r in ([p.get("_path") for p in paths] or (listed if isinstance(listed, list) else []))
                     if isinstance(r, str)]
        files += len(rel_paths)
        if rec.get("name") == "python":
            continue
        for rel in rel_paths:
            m = _SITE.match(rel)
            if m and m.group(1) not in modules and not m.group(1).startswith("_"):
                modules.append(m.group(1))
    for name in ("python3", "python"):
        if (prefix / "bin" / name).exists():
            req.python = prefix / "bin" / name
            break
    req.imports = modules[:_MAX_IMPORTS]
    # Installing the next version beside this one (atomic swap) needs room for a second copy.
    req.need_bytes = max(size, DEFAULT_MIN_FREE_BYTES)
    req.need_inodes = max(files, DEFAULT_MIN_FREE_INODES)
    return req


# --------------------------------------------------------------------------- checks


def _satisfies(version: str, spec: str) -> bool:
    import rattler  # lazy: native, ~0.2 s

    if spec in ("", "*"):
        return True
    try:
        return rattler.VersionSpec(spec).matches(rattler.Version(version))
    except Exception:  # an odd spec in a package record; do not guess
        return False


def _spec_text(entries: list[tuple[str, str]]) -> str:
    specs = sorted({s for s, _ in entries})
    whos = sorted({w for _, w in entries})
    more = f" (+{len(whos) - 2} more)" if len(whos) > 2 else ""
    return f"{','.join(specs)}  [{'; '.join(whos[:2])}{more}]"


def check_glibc(node: Node, req: Requirements) -> Check:
    entries = req.specs.get("__glibc", [])
    have = node.virtual_packages.get("__glibc")
    src = " (CONDA_OVERRIDE_GLIBC)" if "__glibc" in node.overridden else ""
    if not entries:
        return Check("glibc", "pass", "nothing required", f"{have or 'none'}{src}")
    required = _spec_text(entries)
    if have is None:
        return Check("glibc", "fail", required, f"no glibc detected{src}",
                     "This node has no glibc (musl?) or CONDA_OVERRIDE_GLIBC is set empty; run on a glibc Linux node.")
    bad = [s for s, _ in entries if not _satisfies(have, s)]
    if bad:
        return Check("glibc", "fail", required, f"{have}{src}",
                     f"The node's glibc {have} is too old for __glibc {','.join(sorted(set(bad)))}: run on a newer OS "
                     "image, or rebuild the stack with a lower __glibc in stack.yml virtual-packages "
                     "(and packages built for it).")
    return Check("glibc", "pass", required, f"{have}{src}")


def check_cuda(node: Node, req: Requirements) -> Check:
    entries = req.specs.get("__cuda", [])
    have = node.virtual_packages.get("__cuda")
    over = "__cuda" in node.overridden
    if have is None:
        if over:
            found = "no CUDA: CONDA_OVERRIDE_CUDA is set empty"
        elif node.driver is None:
            found = (f"{_NO_DRIVER} ({node.nvidia_smi_error or 'nvidia-smi absent'}; no libcuda.so.1, "
                     "no /proc/driver/nvidia/version)")
        else:
            found = f"CUDA not detected although a driver was seen ({node.driver})"
        if not entries:
            return Check("cuda driver", "pass", "nothing required", found)
        return Check("cuda driver", "fail", _spec_text(entries), found,
                     "This env needs an NVIDIA GPU: submit the job to a GPU partition (e.g. `sbatch "
                     "--gres=gpu:1`) or check that the node's NVIDIA driver is loaded (`nvidia-smi`).")
    found = f"CUDA {have} (CONDA_OVERRIDE_CUDA)" if over else f"CUDA {have} (driver {_driver_version(node)})"
    if not entries:
        return Check("cuda driver", "pass", "nothing required", found)
    bad = [s for s, _ in entries if not _satisfies(have, s)]
    if bad:
        return Check("cuda driver", "fail", _spec_text(entries), found,
                     f"The NVIDIA driver supports CUDA {have}, older than __cuda {','.join(sorted(set(bad)))}: ask "
                     "the admins for a newer driver, pick newer GPU nodes, or lower __cuda in stack.yml "
                     "virtual-packages and re-lock.")
    return Check("cuda driver", "pass", _spec_text(entries), found)


def _driver_version(node: Node) -> str:
    return node.gpus[0].driver_version if node.gpus else "version unknown"


def check_gpus(node: Node, req: Requirements) -> Check:
    needs_gpu = bool(req.specs.get("__cuda"))
    arch = req.specs.get("__cuda_arch", [])
    required = ("a GPU" if needs_gpu else "nothing required") + (f", compute capability {_spec_text(arch)}"
                                                                 if arch else "")
    if not node.gpus:
        if "__cuda" in node.overridden and node.virtual_packages.get("__cuda"):
            return Check("gpus", "warn", required, f"none listed ({node.nvidia_smi_error}); CUDA given by "
                         "CONDA_OVERRIDE_CUDA, so GPUs were not required", "")
        found = f"none: {_NO_DRIVER} ({node.nvidia_smi_error})" if node.driver is None else \
            f"none listed ({node.nvidia_smi_error})"
        if needs_gpu or arch:
            return Check("gpus", "fail", required, found,
                         "Run on a node with an NVIDIA GPU (Slurm: --gres=gpu:1 or a GPU partition).")
        return Check("gpus", "pass", required, found)
    listed = "; ".join(f"{g.name} (cc {g.compute_cap}, {g.memory_total})" for g in node.gpus)
    found = f"{len(node.gpus)} GPU(s): {listed}"
    bad = [g for g in node.gpus for s, _ in arch if not _satisfies(g.compute_cap, s)]
    if bad:
        return Check("gpus", "fail", required, found,
                     "A GPU's compute capability is below what the packages were built for: pick another GPU "
                     "type (Slurm --constraint) or rebuild for this architecture.")
    return Check("gpus", "pass", required, found)


def check_space(path: Path, need_bytes: int, need_inodes: int) -> Check:
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    inodes = st.f_favail
    required = f">= {_gb(need_bytes)} and >= {need_inodes} inodes free"
    # Some file systems (btrfs, many network ones) report no inode limit as 0 files total.
    inodes_text = "unlimited" if st.f_files == 0 else str(inodes)
    found = f"{_gb(free)} and {inodes_text} inodes free on {path}"
    problems = []
    if free < need_bytes:
        problems.append("space")
    if st.f_files != 0 and inodes < need_inodes:
        problems.append("inodes")
    if problems:
        return Check("free space", "fail", required, found,
                     f"Not enough free {' and '.join(problems)} on {path}: remove old envs or caches, ask for "
                     "more quota, or install to another file system (--prefix / --target).")
    return Check("free space", "pass", required, found)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


_IMPORT_SCRIPT = r"""
import importlib, json, sys
res = {}
for m in sys.argv[1:]:
    try:
        importlib.import_module(m)
        res[m] = None
    except BaseException as e:
        res[m] = f"{type(e).__name__}: {e}"[:300]
print("CONDASTACK-IMPORTS " + json.dumps({"python": sys.version.split()[0], "prefix": sys.prefix, "r": res}))
"""


def check_imports(req: Requirements) -> Check:
    if req.python is None:
        return Check("python imports", "pass", "nothing required", "no python in the env")
    mods = req.imports
    required = "imports " + (", ".join(mods) if mods else "(python only)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"
    try:
        out = subprocess.run([str(req.python), "-c", _IMPORT_SCRIPT, *mods], capture_output=True, text=True,
                             timeout=IMPORT_TIMEOUT_S, env=env, cwd=str(req.prefix))
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check("python imports", "fail", required, f"{req.python} did not run: {e}",
                     "The env's python cannot start: reinstall the env (condastack install) and check it was "
                     "relocated to this path.")
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("CONDASTACK-IMPORTS ")), None)
    if out.returncode != 0 or line is None:
        err = (out.stderr or out.stdout).strip().splitlines()[-1:] or [f"exit {out.returncode}"]
        return Check("python imports", "fail", required, f"{req.python} failed: {err[0][:300]}",
                     "The env's python cannot start: reinstall the env (condastack install) and check it was "
                     "relocated to this path.")
    try:
        data = json.loads(line.split(" ", 1)[1])
        if not (isinstance(data, dict) and isinstance(data.get("r"), dict) and isinstance(data.get("prefix"), str)):
            raise ValueError("not the expected object")
    except ValueError as e:
        return Check("python imports", "fail", required, f"{req.python} printed an unreadable report ({e})",
                     "Something in the env (a sitecustomize?) changes python's output: reinstall the env.")
    failed = {m: e for m, e in data["r"].items() if e}
    base = f"python {data['python']}"
    if req.prefix is not None and Path(data["prefix"]).resolve() != Path(req.prefix).resolve():
        return Check("python imports", "fail", required, f"{base} reports sys.prefix {data['prefix']}",
                     "The env was not relocated to this path: reinstall it with `condastack install`.")
    if failed:
        listed = "; ".join(f"{m}: {e}" for m, e in failed.items())
        return Check("python imports", "fail", required, f"{base}; failed: {listed}",
                     "A package of the env does not import on this node: reinstall the env; if it persists the "
                     "package needs something the node lacks (see its error).")
    return Check("python imports", "pass", required, f"{base}; {len(mods)} module(s) imported")


# --------------------------------------------------------------------------- entry point


def run_doctor(*, root: Path | None = None, layer: str | None = None, prefix: Path | None = None,
               target: Path | None = None, min_free_bytes: int | None = None, min_free_inodes: int | None = None,
               node: Node | None = None) -> Report:
    """Check this node against a layer of the stack at `root` or the env at `prefix`.

    Free space is checked on `target` (default: the prefix's file system, where an
    update needs room for a second copy of the env; else the project folder).
    """
    if (layer is None) == (prefix is None):
        raise CondastackError("doctor: name a LAYER of the stack or an installed env with --prefix (not both).")
    node = node or detect_node()
    if prefix is not None:
        req = requirements_for_prefix(Path(prefix))
    else:
        req = requirements_for_layer(Path(root or "."), layer or "", node.platform)
        req.platform = node.platform
    if target is not None:  # e.g. a job's scratch: the env's own size says nothing about it
        req.need_bytes, req.need_inodes = DEFAULT_MIN_FREE_BYTES, DEFAULT_MIN_FREE_INODES
    req.need_bytes = req.need_bytes if min_free_bytes is None else min_free_bytes
    req.need_inodes = req.need_inodes if min_free_inodes is None else min_free_inodes
    fs = Path(target) if target is not None else (req.prefix if req.prefix else Path(root or ".").resolve())
    while not fs.exists() and fs != fs.parent:
        fs = fs.parent  # the file system a future install would land on
    checks = [check_glibc(node, req), check_cuda(node, req), check_gpus(node, req),
              check_space(fs, req.need_bytes, req.need_inodes)]
    if req.platform and req.platform != node.platform:
        checks.insert(0, Check("platform", "fail", req.platform, node.platform,
                               f"This env was built for {req.platform}; install the {node.platform} build instead."))
    if req.kind == "prefix":
        checks.append(check_imports(req))

        checks.extend(torch_checks(req.prefix or Path(prefix or "."), node))
    return Report(node=node, requirements=req, filesystem=fs, checks=checks)


def machine_summary(node: Node) -> str:
    vps = ", ".join(f"{k}={v}" for k, v in node.virtual_packages.items() if k != "__unix")
    return f"{node.hostname} ({node.platform}, {_platform.machine()}): {vps}"
