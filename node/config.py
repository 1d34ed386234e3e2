"""The node's settings: defaults, then the TOML config file, then command-line flags.

Theory of operation
-------------------
Every ``starling`` command works on one *data directory* (``--data-dir``, else
``$STARLING_DATA_DIR``, else the per-user data directory such as
``~/.local/share/starling``). It holds the identity key, the database, the
DHT's saved contacts, the control socket of a running node and, optionally,
``config.toml``. ``--config PATH`` reads another file instead. Flags given on
the command line win over the file, and the file wins over the defaults.

The file (every key optional; unknown keys and wrong types are errors that
name the key and the file)::

    [node]
    network = "starling"    # network name; nodes of different networks never talk
    listen = "0.0.0.0"      # IP address to bind the UDP socket to
    port = 0                # UDP port; 0: the port of the last run if free, else any
    seeds = []              # bootstrap strings (from `starling node` on a running node)
    public = "auto"         # "auto" (measure reachability), true or false: serve the
                            # DHT and relay for others only when publicly reachable
    relay = true            # offer relaying to others when publicly reachable

    [log]
    level = "info"          # debug, info, warning or error
    json = false            # one JSON object per log line instead of text
    status_interval = 60    # seconds between status lines; 0 turns them off

    [chat]
    display_name = ""       # the name `starling chat` and `starling join` use

The last run's port is kept in ``node-state.json`` in the data directory, so a
node's bootstrap string stays the same across restarts without the operator
choosing a port, and two data directories on one machine do not collide.
"""

from __future__ import annotations

import ipaddress
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_FILE_NAME = "config.toml"
STATE_FILE_NAME = "node-state.json"
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """The configuration is unusable; the message names the key and the file."""


@dataclass
class Settings:
    """Everything a node needs to start, after defaults, file and flags are merged."""

    data_dir: Path
    network: str = "starling"
    listen: str = "0.0.0.0"
    port: int = 0
    seeds: list[str] = field(default_factory=list)
    public: bool | None = None  # None: decide by measuring reachability
    relay: bool = True
    log_level: str = "info"
    log_json: bool = False
    status_interval: float = 60.0
    display_name: str = ""
    config_file: Path | None = None  # the file that was read, if any

    def port_to_bind(self) -> int:
        """The configured port, else the last run's (kept in the state file), else 0."""
        if self.port:
            return self.port
        return int(load_state(self.data_dir).get("port", 0))


# The schema: section -> key -> (attribute, checker).
def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("a string")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("true or false")
    return value


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise TypeError("an integer from 0 to 65535")
    return value


def _address(value: Any) -> str:
    try:
        return str(ipaddress.ip_address(_string(value)))
    except ValueError:
        raise TypeError("an IP address such as 0.0.0.0 or 127.0.0.1") from None


def _seeds(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise TypeError("a list of bootstrap strings")
    return list(value)


def _public(value: Any) -> bool | None:
    if value == "auto":
        return None
    if isinstance(value, bool):
        return value
    raise TypeError('"auto", true or false')


def _level(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in LOG_LEVELS:
        raise TypeError(" or ".join(LOG_LEVELS))
    return value.lower()


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise TypeError("a number of seconds, 0 or more")
    return float(value)


SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "node": {
        "network": ("network", _string),
        "listen": ("listen", _address),
        "port": ("port", _port),
        "seeds": ("seeds", _seeds),
        "public": ("public", _public),
        "relay": ("relay", _bool),
    },
    "log": {
        "level": ("log_level", _level),
        "json": ("log_json", _bool),
        "status_interval": ("status_interval", _seconds),
    },
    "chat": {"display_name": ("display_name", _string)},
}


def load(data_dir: Path, config_file: Path | None = None) -> Settings:
    """Defaults overridden by ``config_file`` (else ``<data_dir>/config.toml`` if present)."""
    settings = Settings(data_dir=data_dir)
    path = config_file if config_file is not None else data_dir / CONFIG_FILE_NAME
    if config_file is None and not path.exists():
        return settings
    try:
        with path.open("rb") as f:
            document = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    settings.config_file = path
    for section, table in document.items():
        if section not in SCHEMA:
            raise ConfigError(
                f"{path}: unknown section [{section}] (known: "
                + ", ".join(f"[{s}]" for s in SCHEMA)
                + ")"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section} must be a [{section}] table")
        keys = SCHEMA[section]
        for key, value in table.items():
            if key not in keys:
                raise ConfigError(
                    f"{path}: unknown key '{key}' in [{section}] (known: {', '.join(keys)})"
                )
            attribute, check = keys[key]
            try:
                setattr(settings, attribute, check(value))
            except TypeError as exc:
                raise ConfigError(f"{path}: [{section}] {key} must be {exc}") from None
    return settings


def override(settings: Settings, **flags: Any) -> Settings:
    """Apply command-line flags; a flag left at None keeps the file's value."""
    for name, value in flags.items():
        if value is None:
            continue
        if not hasattr(settings, name):
            raise AttributeError(name)
        setattr(settings, name, value)
    return settings


def load_state(data_dir: Path) -> dict[str, Any]:
    """What the last run remembered (its port); empty if nothing or unreadable."""
    try:
        data = json.loads((data_dir / STATE_FILE_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_state(data_dir: Path, **values: Any) -> None:
    state = {**load_state(data_dir), **values}
    tmp = data_dir / f".{STATE_FILE_NAME}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(data_dir / STATE_FILE_NAME)
