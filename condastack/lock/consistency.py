"""The consistency check of one locked layer on one platform.

Every conda record's `depends` must be met inside the layer's own set, and
its `constrains` must hold for whatever of that name the set holds. The set is
the conda records, the effective virtual packages, and the pip packages under
the conda names that provide them (the shipped conda-forge <-> PyPI mapping).
A lock that fails this is never written; `lock --check` runs it on the files.
"""

from __future__ import annotations

from dataclasses import dataclass

from condastack.core.names import conda_names_for_pypi


@dataclass(frozen=True)
class Violation:
    """One unmet `depends` or broken `constrains` of one record."""

    record: str  # "name version build"
    kind: str  # "depends" or "constrains"
    spec: str
    found: str  # what the set holds under that name ("nothing" when absent)

    def __str__(self) -> str:
        verb = "needs" if self.kind == "depends" else "constrains"
        return f"{self.record} {verb} '{self.spec}', but the layer holds {self.found}"


def check_records(records: list, vpkgs: dict[str, str], pip: list[tuple[str, str]] | None = None) -> list[Violation]:
    """Violations of `records` (RepoDataRecords) against the whole set; [] when consistent."""
    import rattler  # lazy: native, ~0.2 s

    held: dict[str, list] = {}
    for r in records:
        held.setdefault(r.name.normalized, []).append(r)
    for name, value in vpkgs.items():
        ver, _, build = str(value).partition("=")
        held.setdefault(name, []).append(_stand_in(name, ver, build or "0"))

    for pname, version in pip or []:
        for cname in conda_names_for_pypi(pname):
            if cname not in held:
                held[cname] = [_stand_in(cname, version, "pypi_0")]
    out: list[Violation] = []
    met: dict[str, bool] = {}  # spec -> whether the set meets it: the same few specs recur in most records
    for r in records:
        label = f"{r.name.normalized} {r.version} {r.build}"
        for kind, specs in (("depends", r.depends), ("constrains", r.constrains)):
            for spec in specs:
                name = spec.split()[0].split("[")[0].lower() if spec.strip() else ""
                have = held.get(name, [])
                if not have:
                    if kind == "depends":
                        out.append(Violation(label, kind, spec, "nothing"))
                    continue
                if spec not in met:
                    ms = _match_spec(rattler, spec)
                    met[spec] = ms is None or any(ms.matches(h) for h in have)
                if not met[spec]:
                    found = ", ".join(f"{h.name.normalized} {h.version} {h.build}" for h in have)
                    out.append(Violation(label, kind, spec, found))
    return out


def _match_spec(rattler, spec: str):  # noqa: ANN001, ANN202
    try:
        return rattler.MatchSpec(spec)
    except Exception:  # a spec rattler cannot parse is not ours to judge
        return None


def _stand_in(name: str, version: str, build: str):  # noqa: ANN202
    """A record standing for a virtual or pip package, so MatchSpec can test it."""
    import rattler  # lazy: native, ~0.2 s

    try:
        return rattler.PackageRecord(name, version, rattler.BuildString(build), 0, "noarch")
    except Exception:  # a PEP 440 version rattler cannot read: stand in as 0
        return rattler.PackageRecord(name, "0", rattler.BuildString(build), 0, "noarch")


def describe(layer: str, platform: str, violations: list[Violation], limit: int = 8) -> str:
    """One paragraph naming the records that break the set."""
    shown = "; ".join(str(v) for v in violations[:limit])
    more = f"; and {len(violations) - limit} more" if len(violations) > limit else ""
    return f"layer {layer} ({platform}) is not consistent: {shown}{more}."
