"""Artifact signatures, with the OpenSSF `model-signing` library (elliptic-curve keys: works offline).

A signature covers every file of the artifact directory, its `deploycheck.json` sidecar included (so the format,
the factory and the file list it names are signed too), and is stored beside them as `deploycheck.sig`. A
format whose loading can run code from the artifact (`Format.executes_code`) loads only when its directory
verifies against a trusted public key, or when the caller says it trusts the code (`trust_code`).
`model-signing` is an optional extra: `pip install 'deploycheck[signing]'`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from deploycheck.artifact import SIGNATURE_FILE
from deploycheck.errors import ArtifactError, DeployCheckError

SIGNING_EXTRA = "pip install 'deploycheck[signing]'"


def _model_signing() -> Any:
    """The optional `model_signing` package (imported here only: signing is an extra)."""
    try:
        import model_signing
        from model_signing import hashing, signing, verifying  # noqa: F401  (loads the submodules)
    except ImportError as exc:
        raise DeployCheckError(f"signing and verifying artifacts needs model-signing: {SIGNING_EXTRA} "
                               f"({exc})") from exc
    return model_signing


def _hashing(library: Any) -> Any:
    return library.hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False)


def sign_artifact(path: str | os.PathLike[str], private_key: str | os.PathLike[str],
                  password: str | None = None) -> Path:
    """Sign every file of the artifact directory with an elliptic-curve private key (PEM); the signature is
    written atomically to `path/deploycheck.sig`, replacing an earlier one."""
    library = _model_signing()
    directory = Path(path)
    target = directory / SIGNATURE_FILE
    handle, temporary = tempfile.mkstemp(prefix=f".{directory.name}.", suffix=".sig", dir=directory.parent)
    os.close(handle)
    try:
        config = library.signing.Config().use_elliptic_key_signer(private_key=Path(private_key), password=password)
        config.set_hashing_config(_hashing(library)).sign(directory, Path(temporary))
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(temporary, 0o666 & ~mask)
        os.replace(temporary, target)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{directory}: signing with {private_key} failed: {exc}") from exc
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target


def verify_artifact(path: str | os.PathLike[str], public_key: str | os.PathLike[str], label: str = "") -> None:
    """Raise `ArtifactError` unless the directory carries a signature by the key's owner over exactly its files
    (unsigned, altered, added or removed files and another key's signature are all refused)."""
    library = _model_signing()
    directory = Path(path)
    label = label or str(directory)
    signature = directory / SIGNATURE_FILE
    if not signature.is_file():
        raise ArtifactError(f"{label}: {directory} is not signed ({SIGNATURE_FILE} is missing) and a trusted key "
                            f"was given ({public_key}); sign it with `deploycheck export --sign-key` or the key's "
                            "owner")
    try:
        config = library.verifying.Config().use_elliptic_key_verifier(public_key=Path(public_key))
        config.set_hashing_config(_hashing(library)).verify(directory, signature)
    except Exception as exc:  # model-signing raises ValueError, JSON and cryptography errors alike
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ArtifactError(f"{label}: {directory} does not verify against {public_key}: {reason}") from exc
