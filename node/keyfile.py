"""The node's identity on disk: one secret seed in a file only its owner can read.

Format (text, so an operator can recognise it; one key line, ``#`` comments)::

    # Starling identity key. Whoever holds this file is this peer: keep it secret.
    # peer sp1...
    starling-ed25519-seed/1 <64 lowercase hex digits>

The file is created with mode 0600 inside a directory with mode 0700, written
to a temporary name, flushed to disk and renamed, so a crash never leaves a
half-written key. An existing key is never overwritten. Like ssh, loading
refuses a key file that group or others can read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import platformdirs

from starling.proto.errors import ErrorCode, IdentityError
from starling.proto.identity import PrivateKey

KEY_FILE_NAME = "identity.key"
_HEADER = "starling-ed25519-seed/1"


def default_data_dir() -> Path:
    """``$STARLING_DATA_DIR`` if set, else the platform's per-user data directory."""
    env = os.environ.get("STARLING_DATA_DIR")
    if env:
        return Path(env)
    return Path(platformdirs.user_data_dir("starling", appauthor=False))


def key_path(data_dir: Path) -> Path:
    return data_dir / KEY_FILE_NAME


def create(data_dir: Path) -> PrivateKey:
    """Make a new identity from the OS's randomness and store it; refuse to overwrite."""
    path = key_path(data_dir)
    if path.exists():
        raise FileExistsError(
            f"an identity already exists at {path}; refusing to overwrite it "
            "(move it away first if you really want a new identity)"
        )
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = PrivateKey(os.urandom(32))
    text = (
        "# Starling identity key. Whoever holds this file is this peer: keep it secret.\n"
        f"# peer {key.peer_id.text()}\n"
        f"{_HEADER} {key.seed.hex()}\n"
    )
    tmp = path.with_name(f".{KEY_FILE_NAME}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        # link() fails if the target appeared meanwhile: never clobber a key.
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return key


def load(data_dir: Path) -> PrivateKey:
    """Read the identity; FileNotFoundError if there is none, IdentityError if it is bad."""
    path = key_path(data_dir)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            ErrorCode.KEY_FILE_PERMISSIONS,
            f"{path} is accessible by other users (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {path}",
        )
    lines = [
        line.strip()
        for line in path.read_text(encoding="ascii", errors="replace").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    parts = lines[0].split() if len(lines) == 1 else []
    if len(parts) != 2 or parts[0] != _HEADER:
        raise IdentityError(
            ErrorCode.KEY_FILE_FORMAT,
            f"{path} is not a Starling key file (expected one line '{_HEADER} <hex seed>')",
        )
    try:
        seed = bytes.fromhex(parts[1])
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise IdentityError(
            ErrorCode.KEY_FILE_FORMAT, f"{path}: the seed must be 64 hexadecimal digits"
        )
    return PrivateKey(seed)


def load_or_create(data_dir: Path) -> tuple[PrivateKey, bool]:
    """The identity, creating it on first use; the flag says whether it is new."""
    try:
        return load(data_dir), False
    except FileNotFoundError:
        return create(data_dir), True
