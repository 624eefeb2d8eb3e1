"""Who made an archive: SSH signatures over the archive and its manifest, and the site's policy.

`pack --sign KEY` runs `ssh-keygen -Y sign -f KEY -n condastack` over the archive and over its
manifest and writes `ARCHIVE.sig` and `ARCHIVE.manifest.json.sig` (the manifest holds the
archive's sha256, so the `.sha256` file needs no signature of its own: a replaced one disagrees
with the signed manifest). `install`, `unpack` and `slurm-preamble` check them with
`ssh-keygen -Y verify` against an allowed-signers file (the format of ssh-keygen(1), ALLOWED
SIGNERS): `--allowed-signers FILE`, or the site's.

The site's policy is a TOML file `.condastack/site.toml` in any folder above the install prefix
(or the image):

    require_signature = true                  # refuse archives that are not signed
    allowed_signers = "allowed_signers"       # relative to the .condastack folder, or absolute

Every such file from `/` down is read, so a policy set high up cannot be turned off lower down:
a signature is required when any of them requires it or names an allowed-signers file, and it
must satisfy every allowed-signers file they name (and `--allowed-signers`, when given). Unknown
keys are refused (a misspelt `require_signatures` must not silently turn checking off).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from condastack.archive.manifest import Manifest
from condastack.core.errors import CondastackError
from condastack.core.layout import sidecars, signed_pairs, site_config_candidates

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

NAMESPACE = "condastack"
_KEYS = {"require_signature": bool, "allowed_signers": str}


class SignatureRefused(CondastackError):
    """An archive whose signatures do not show it came, unchanged, from an allowed signer."""

    def __init__(self, archive: Path, cause: str, advice: str) -> None:
        self.archive, self.cause, self.advice = archive, cause, advice
        super().__init__(f"{archive}: refused: {cause}. {advice} Nothing was installed.")


@dataclass(frozen=True)
class SitePolicy:
    """What the site's `.condastack/site.toml` files ask for."""

    require_signature: bool = False
    allowed_signers: tuple[Path, ...] = ()
    sources: tuple[Path, ...] = ()  # the config files read


def _ssh_keygen() -> str:
    exe = shutil.which("ssh-keygen")
    if exe is None:
        raise CondastackError("ssh-keygen is not on PATH; install OpenSSH (8.1 or newer) to sign or check archives.")
    return exe


# --------------------------------------------------------------------------- signing


def sign_file(key: Path, path: Path) -> bytes:
    """The SSH signature (armored, namespace `condastack`) of the file at `path`, made with `key`."""
    key = Path(key)
    if not key.is_file():
        raise CondastackError(f"--sign {key}: no such key file (an SSH private key, or a public key whose private "
                              "half is in ssh-agent).")
    with open(path, "rb") as data:
        p = subprocess.run([_ssh_keygen(), "-Y", "sign", "-f", str(key), "-n", NAMESPACE], stdin=data,
                           capture_output=True, check=False)
    if p.returncode != 0 or not p.stdout.startswith(b"-----BEGIN SSH SIGNATURE-----"):
        why = p.stderr.decode(errors="replace").strip().splitlines()
        raise CondastackError(f"--sign {key}: ssh-keygen could not sign {Path(path).name}: "
                              f"{why[-1] if why else 'no signature'}. Nothing was written.")
    return p.stdout


# --------------------------------------------------------------------------- the site's policy


def _read_config(path: Path) -> tuple[bool, Path | None]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise CondastackError(f"{path}: unreadable site config ({e}). Fix it (or ask the site's admins to); "
                              "nothing was installed.") from None
    for k, v in data.items():
        if k not in _KEYS:
            raise CondastackError(f"{path}: unknown key '{k}' (known: {', '.join(_KEYS)}). Nothing was installed.")
        if not isinstance(v, _KEYS[k]):
            raise CondastackError(f"{path}: '{k}' must be a {_KEYS[k].__name__}. Nothing was installed.")
    signers = data.get("allowed_signers")
    return bool(data.get("require_signature", False)), (path.parent / signers if signers else None)


def site_policy(targets: Iterable[Path]) -> SitePolicy:
    """The policy of every `.condastack/site.toml` above any of `targets` (see the module docstring)."""
    require, signers, sources = False, [], []
    for target in targets:
        for cfg in site_config_candidates(Path(target)):
            if cfg in sources or not cfg.is_file():
                continue
            req, allowed = _read_config(cfg)
            require |= req
            sources.append(cfg)
            if allowed is not None and allowed not in signers:
                signers.append(allowed)
    return SitePolicy(require, tuple(signers), tuple(sources))


# --------------------------------------------------------------------------- checking


def _principal(sig: Path, allowed: Path) -> str | None:
    p = subprocess.run([_ssh_keygen(), "-Y", "find-principals", "-s", str(sig), "-f", str(allowed)],
                       capture_output=True, text=True, check=False)
    lines = p.stdout.split()
    return lines[0] if p.returncode == 0 and lines else None


def _verify_stream(allowed: Path, principal: str, sig: Path, signed: Path) -> tuple[bool, str]:
    """`ssh-keygen -Y verify` of `signed`, fed through a pipe so the file is hashed in the same read;
    returns (the signature matches, the file's sha256)."""
    h = hashlib.sha256()
    p = subprocess.Popen([_ssh_keygen(), "-Y", "verify", "-f", str(allowed), "-I", principal, "-n", NAMESPACE,
                          "-s", str(sig)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    assert p.stdin is not None
    try:
        with open(signed, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
                p.stdin.write(block)
    except BrokenPipeError:  # ssh-keygen gave up early: the verdict is in its exit status
        pass
    finally:
        with contextlib.suppress(BrokenPipeError):
            p.stdin.close()
    return p.wait() == 0, h.hexdigest()


def verify_signed(archive: Path, allowed: Path) -> str:
    """Check the archive's and its manifest's signatures against the allowed-signers file, and that the
    archive and its .sha256 are the ones the signed manifest names; returns the signer. SignatureRefused
    names the cause: unsigned, a key not allowed, a file changed since it was signed, a replaced .sha256."""
    archive = Path(archive)
    if not Path(allowed).is_file():
        raise CondastackError(f"{allowed}: no such allowed-signers file; nothing was installed.")
    signer, digests = "", {}
    for signed, sig in signed_pairs(archive):
        if not sig.is_file():
            raise SignatureRefused(archive, f"{signed.name} is not signed (no {sig.name} beside it)",
                                   "Ask its builder for a signed archive (`condastack pack --sign KEY`).")
        principal = _principal(sig, allowed)
        if principal is None:
            raise SignatureRefused(archive, f"{sig.name} was made by a key that is not in {allowed} "
                                   "(or is not an SSH signature)",
                                   "Install only archives signed by a key your site trusts.")
        ok, digests[signed] = _verify_stream(allowed, principal, sig, signed)
        if not ok:
            raise SignatureRefused(archive, f"{signed.name} was changed after it was signed by {principal} "
                                   f"({sig.name} does not match it)",
                                   "The file is damaged or was tampered with; copy it again from its builder.")
        signer = principal
    _matches_manifest(archive, digests[archive])
    return signer


def _matches_manifest(archive: Path, actual: str) -> None:
    """Both signatures hold: the signed manifest must name this archive, and the .sha256 agree with it."""
    sha_file, man_file = sidecars(archive)
    named = Manifest.read(man_file).sha256.lower()
    if named != actual:
        raise SignatureRefused(archive, f"{man_file.name} is signed but names another archive (sha256 "
                               f"{named[:16]}…, this one is {actual[:16]}…)",
                               "Copy the archive and its sidecars from one `condastack pack` run.")
    words = sha_file.read_text().split() if sha_file.is_file() else []
    if words and words[0].lower() != named:
        raise SignatureRefused(archive, f"{sha_file.name} was replaced: it says {words[0][:16]}…, but the signed "
                               f"{man_file.name} says {named[:16]}… (and {archive.name} hashes to that)",
                               f"Delete {sha_file.name} and copy it again from the archive's builder.")


def check_signatures(archive: Path, allowed_signers: Path | None, targets: Iterable[Path]) -> str | None:
    """Enforce `--allowed-signers` and the site's policy for installing `archive` at `targets`; returns the
    signer, or None when nothing asks for a signature."""
    policy = site_policy(targets)
    files = ([Path(allowed_signers)] if allowed_signers else []) + list(policy.allowed_signers)
    if not files:
        if policy.require_signature:
            raise SignatureRefused(Path(archive), f"the site requires signed archives ({policy.sources[-1]}) but "
                                   "names no allowed_signers there", "Pass --allowed-signers FILE.")
        return None
    signer = None
    for f in files:
        try:
            signer = verify_signed(archive, f)
        except SignatureRefused as e:
            if not policy.sources:
                raise
            # Say who asked for the check, so the user knows why no flag skips it.
            raise SignatureRefused(e.archive, e.cause, f"{e.advice} (Site policy: "
                                   f"{', '.join(map(str, policy.sources))}.)") from None
    return signer


__all__ = ["NAMESPACE", "SignatureRefused", "SitePolicy", "check_signatures", "sign_file", "site_policy",
           "verify_signed"]
