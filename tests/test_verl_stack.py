"""The project's own stack (environments/): verl v0.5's images as conda layers, checked offline.

conda-forge is not reachable here, so the stack cannot be solved in CI. These
tests check what can be checked: the stack file is valid, the layer graph is
base -> {app, app-mcore013, app-vllm}, every pin of the seed's version table is
carried, with that version, by the layer that should carry it, and the recipes
for the git-built components parse and render.
"""

from __future__ import annotations

import fnmatch
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import rattler
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers import REPO
from condastack.spec.stack import Stack, load_stack
from condastack.channel.wrap import default_channel

PLATFORM = "linux-64"


@dataclass(frozen=True)
class Pin:
    layer: str  # the layer whose own specs must carry it
    name: str  # conda name or PyPI name
    version: str  # exact version ("2.7.1"; a longer pin like 2.8.0.post2 counts), or a bound (">=4.53")
    source: str  # where the seed states it


# The seed's version table (verl README of docker/verl0.5-cu126-torch2.7.1-fa2.8.0 and its
# Dockerfiles, as read in /work/shared/VERL.md), kept here as data.
SEED_TABLE = [
    Pin("base", "python", "3.10", "Dockerfile.base: nvcr.io/nvidia/pytorch:24.08-py3 (python 3.10)"),
    Pin("base", "cuda-version", "12.6", "README: cuda 12.6"),
    # The seed says cudnn 9.8.0; real conda-forge metadata: pytorch 2.7.1 cuda126 py310 needs >=9.10.1.4,<10.
    Pin("base", "cudnn", ">=9.10.1.4,<10", "conda-forge pytorch 2.7.1 cuda126_mkl_py310_h5ee0071_300"),
    Pin("base", "torch", "2.7.1", "README: torch 2.7.1"),
    Pin("base", "torchvision", "0.22.1", "Dockerfile.base"),
    Pin("base", "torchaudio", "2.7.1", "Dockerfile.base"),
    Pin("base", "flash-attn", "2.8.0", "README: flash_attn 2.8.0 (wheel 2.8.0.post2)"),
    Pin("base", "tensordict", "0.6.2", "Dockerfile.base"),
    Pin("base", "transformers", ">=4.53", "Dockerfile.base"),
    Pin("base", "numpy", "<2.0.0", "Dockerfile.base"),
    Pin("base", "pyarrow", ">=19.0.1", "Dockerfile.base"),
    Pin("base", "nvidia-ml-py", ">=12.560.30", "Dockerfile.base"),
    Pin("base", "apex", "0.1", "Dockerfile.base: apex from git (pinned here)"),
    Pin("base", "deep-ep", "1.1.0", "Dockerfile.base: DeepEP a84a248"),
    Pin("app", "sglang", "0.4.8", "README: sglang 0.4.8 (Dockerfile sglang[all]==0.4.8)"),
    Pin("app", "flashinfer-python", "0.2.6.post1", "Dockerfile.app.sglang.mcore0.12"),
    Pin("app", "nvidia-cudnn-cu12", "9.8.0.87", "README: nvidia-cudnn-cu12 9.8.0.87"),
    Pin("app", "transformer-engine", "2.3", "README: transformer_engine 2.3"),
    Pin("app", "megatron-core", "0.12.2", "README: megatron.core core_v0.12.2"),
    Pin("app-mcore013", "transformer-engine", "2.5", "README preview: transformer_engine 2.5"),
    Pin("app-mcore013", "megatron-core", "0.13.0", "README preview: megatron.core core_r0.13.0"),
    Pin("app-vllm", "vllm", "0.9.1", "verl0.5-cu126-torch2.7-fa2.7.4: vllm==0.9.1"),
]
# Unversioned in the images; they must still be there.
PRESENT = {
    "base": ["ray", "accelerate", "datasets", "peft", "hydra-core", "liger-kernel", "pandas", "wandb",
             "torchdata", "xgrammar", "qwen-vl-utils", "codetiming", "pylatexenc", "mathruler", "blobfile"],
    "app": ["torch-memory-saver", "mbridge"],
}
# A conda name that differs from the PyPI name used in the table.
CONDA_NAMES = {"torch": "pytorch", "ray": "ray-default"}
GIT_BUILT = {"apex", "deep-ep", "transformer-engine", "megatron-core"}


def own_pins(stack: Stack, layer: str) -> dict[str, tuple[str, str]]:
    """name -> (kind, constraint) for a layer's own conda and pip specs."""
    out: dict[str, tuple[str, str]] = {}
    lay = stack.layers[layer]
    for spec in lay.conda[PLATFORM]:
        ms = rattler.MatchSpec(spec)
        out[ms.name.normalized] = ("conda", str(ms.version) if ms.version is not None else "")
    for req in lay.pip[PLATFORM]:
        r = Requirement(req)
        out[canonicalize_name(r.name)] = ("pip", str(r.specifier))
    return out


def _lookup(pins: dict[str, tuple[str, str]], name: str) -> tuple[str, str] | None:
    for n in (name, CONDA_NAMES.get(name, name)):
        if n in pins:
            return pins[n]
    return None


def _exact(constraint: str) -> str | None:
    """The version an exact pin names: '==2.7.1', '2.7.1', '2.7.1.*' and '0.22.1.*' are exact."""
    c = constraint.strip()
    if "," in c or c.startswith(("<", ">", "!", "~")):
        return None
    return c.lstrip("=").removesuffix(".*")


def check_table(stack: Stack, table: list[Pin] = SEED_TABLE) -> list[str]:
    """Every problem with the table against the stack, as readable lines (empty: all good)."""
    problems = []
    for pin in table:
        pins = own_pins(stack, pin.layer)
        found = _lookup(pins, pin.name)
        if found is None:
            problems.append(f"{pin.layer}: {pin.name} is missing ({pin.source})")
            continue
        _, constraint = found
        if pin.version[0] in "<>":
            ok = constraint.replace(" ", "") == pin.version
        else:
            exact = _exact(constraint)
            ok = exact is not None and (exact == pin.version or exact.startswith(pin.version + "."))
        if not ok:
            problems.append(f"{pin.layer}: {pin.name} is '{constraint}', the seed says {pin.version} ({pin.source})")
    for layer, names in PRESENT.items():
        pins = own_pins(stack, layer)
        problems += [f"{layer}: {n} is missing" for n in names if _lookup(pins, n) is None]
    return problems


@pytest.fixture(scope="module")
def stack() -> Stack:
    return load_stack(REPO)


def test_stack_file_is_valid(stack: Stack) -> None:
    assert stack.name == "verl-0.5"
    assert stack.platforms == ("linux-64",)
    assert stack.virtual_packages == {"linux-64": {"__cuda": "12.6", "__glibc": "2.28"}}


def test_layer_graph(stack: Stack) -> None:
    assert set(stack.layers) == {"base", "app", "app-mcore013", "app-vllm"}
    assert stack.layers["base"].extends is None
    assert sorted(stack.children("base")) == ["app", "app-mcore013", "app-vllm"]
    for name in ("app", "app-mcore013", "app-vllm"):
        assert [l.name for l in stack.chain(name)] == ["base", name]
        assert stack.children(name) == []


def test_seed_table_pins(stack: Stack) -> None:
    assert check_table(stack) == []


def test_pins_are_not_duplicated_with_other_versions(stack: Stack) -> None:
    """A pin lives in one layer of a chain: children must not restate a parent's package."""
    for name in ("app", "app-mcore013", "app-vllm"):
        own = set(own_pins(stack, name))
        parent = set(own_pins(stack, "base"))
        assert not (own & parent - {"pip"}), (name, own & parent)


def test_git_built_components_come_from_the_site_channel(stack: Stack) -> None:
    """Components without a release build are conda specs, listed in a layer whose first channel is the site channel."""
    for layer in ("base", "app", "app-mcore013"):
        lay = stack.layers[layer]
        conda = {rattler.MatchSpec(s).name.normalized for s in lay.conda[PLATFORM]}
        pip = {canonicalize_name(Requirement(r).name) for r in lay.pip[PLATFORM]}
        assert not (pip & GIT_BUILT), f"{layer}: a git-built component is a pip dependency"
        if conda & GIT_BUILT:
            # `./channel` in a layer file is the site channel beside the stack (what `condastack wrap` fills)
            assert stack.channels_for(layer)[0] == default_channel(stack.root).as_uri(), layer
    assert not any(s.startswith(("git+", "-e")) or "@ git+" in s
                   for l in stack.layers.values() for s in l.pip[PLATFORM])


def test_check_table_catches_a_wrong_version(tmp_path: Path) -> None:
    """The table check can fail: torch 2.7.0 in base, TE 2.5 in app, or a missing pin are all reported."""
    proj = tmp_path / "proj"
    shutil.copytree(REPO / "environments", proj / "environments", ignore=shutil.ignore_patterns("channel", "recipes"))
    base = proj / "environments" / "base.yml"
    base.write_text(base.read_text().replace("pytorch ==2.7.1 cuda126*", "pytorch ==2.7.0 cuda126*")
                    .replace("    - tensordict==0.6.2\n", ""))
    app = proj / "environments" / "app.yml"
    app.write_text(app.read_text().replace("transformer-engine 2.3.0.*", "transformer-engine 2.5.0.*"))
    problems = check_table(load_stack(proj))
    assert any(p.startswith("base: torch is '==2.7.0'") for p in problems), problems
    assert any(p.startswith("base: tensordict is missing") for p in problems), problems
    assert any(p.startswith("app: transformer-engine is '2.5.0.*'") for p in problems), problems
    assert len(problems) == 3, problems


RECIPES = {
    "apex": ("apex", "0.1", "https://github.com/NVIDIA/apex.git", "10417aceddd7d5d05d7cbf7b0fc2daad1105f8b4"),
    "transformer-engine-2.3": ("transformer-engine", "2.3.0", "https://github.com/NVIDIA/TransformerEngine.git",
                               "refs/tags/v2.3"),
    "transformer-engine-2.5": ("transformer-engine", "2.5.0", "https://github.com/NVIDIA/TransformerEngine.git",
                               "refs/tags/v2.5"),
    "megatron-core-0.12.2": ("megatron-core", "0.12.2", "https://github.com/NVIDIA/Megatron-LM.git",
                             "refs/tags/core_v0.12.2"),
    "megatron-core-0.13.0": ("megatron-core", "0.13.0", "https://github.com/NVIDIA/Megatron-LM.git",
                             "refs/tags/core_v0.13.0"),
    "deep-ep": ("deep-ep", "1.1.0", "https://github.com/deepseek-ai/DeepEP.git",
                "a84a24808fb0ea732f49b874cc456a69dde69076"),
}


@pytest.mark.parametrize("folder", sorted(RECIPES))
def test_recipes_render_pinned(folder: str, stack: Stack) -> None:
    """Each recipe parses and renders (no build: no nvcc or conda-forge here), pinned to the images' git rev."""
    from rattler_build import PlatformConfig, RenderConfig, Stage0Recipe, VariantConfig

    name, version, url, rev = RECIPES[folder]
    rec = Stage0Recipe.from_file(str(REPO / "environments" / "recipes" / folder / "recipe.yaml"))
    (variant,) = rec.render(VariantConfig(), RenderConfig(platform=PlatformConfig(target_platform="linux-64")))
    data = variant.recipe.to_dict()
    assert (data["package"]["name"], data["package"]["version"]) == (name, version)
    git = data["source"][0]
    assert git["git"] == url and (git.get("rev") or git.get("tag")) == rev
    assert any(r.startswith("pytorch") for r in data["requirements"]["run"]) or name == "megatron-core"
    assert any(str(r).startswith("python 3.10") for r in data["requirements"]["run"])
    # The build string is what the layers select (e.g. apex *_g10417ac_*), so a rebuild still matches.
    build = data["build"]["string"]
    for layer in stack.layers.values():
        for spec in layer.conda[PLATFORM]:
            ms = rattler.MatchSpec(spec)
            if ms.name.normalized == name and ms.version is not None and _exact(str(ms.version)) == version:
                parts = spec.split()
                glob = parts[2] if len(parts) > 2 else "*"
                assert fnmatch.fnmatchcase(build, glob), (spec, build)
