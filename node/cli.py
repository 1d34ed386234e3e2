"""The ``starling`` command.

Exit codes: 0 success, 1 the command failed (the message says why and what to
do), 2 the command line itself was wrong (argparse's usage error), 130
interrupted (Ctrl-C).

``starling node`` runs the node (node/daemon.py); every other command talks to
it over the control socket, or starts one in-process for its own duration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from starling.proto.errors import StarlingError
from starling.proto.identity import PrivateKey

from . import config, keyfile
from .config import ConfigError, Settings
from .daemon import DEFAULT_CHANNEL


class CommandError(Exception):
    """A failure the user can act on; printed without a traceback."""


def _emit(args: argparse.Namespace, data: dict[str, object], human: str) -> None:
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(human)


def _identity_json(args: argparse.Namespace, key: PrivateKey) -> dict[str, object]:
    return {
        "peer_id": key.peer_id.text(),
        "peer_id_hex": key.peer_id.raw.hex(),
        "public_key": key.public_key.raw.hex(),
        "key_file": str(keyfile.key_path(args.data_dir)),
    }


def cmd_id_new(args: argparse.Namespace) -> int:
    try:
        key = keyfile.create(args.data_dir)
    except FileExistsError as exc:
        raise CommandError(str(exc)) from None
    _emit(
        args,
        {**_identity_json(args, key), "created": True},
        f"Created a new identity.\npeer ID  {key.peer_id}\n"
        f"key file {keyfile.key_path(args.data_dir)} (keep it secret; back it up)",
    )
    return 0


def cmd_id_show(args: argparse.Namespace) -> int:
    try:
        key = keyfile.load(args.data_dir)
    except FileNotFoundError:
        raise CommandError(
            f"no identity in {args.data_dir}; create one with: starling id new"
            + (f" --data-dir {args.data_dir}" if args.data_dir_given else "")
        ) from None
    _emit(args, _identity_json(args, key), f"peer ID  {key.peer_id}")
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    """Defaults, then the config file, then the flags this command was given."""
    settings = config.load(args.data_dir, getattr(args, "config", None))
    flags = {
        name: getattr(args, name, None)
        for name in ("network", "listen", "port", "public", "log_level", "status_interval")
    }
    if getattr(args, "seeds", None):
        flags["seeds"] = [*settings.seeds, *args.seeds]
    if getattr(args, "no_relay", False):
        flags["relay"] = False
    if getattr(args, "log_json", False):
        flags["log_json"] = True
    return config.override(settings, **flags)


def cmd_node(args: argparse.Namespace) -> int:
    from . import daemon

    settings = _settings(args)
    daemon.setup_logging(settings.log_level, settings.log_json)
    try:
        return asyncio.run(daemon.serve(settings, args.json))
    except daemon.NodeRunning as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(
            f"cannot listen on {settings.listen} port {settings.port}: {exc.strerror}; "
            "choose another with --port"
        ) from None


# ----------------------------------------------------------------------------- client commands
#
# Each one talks to the data directory's node over its control socket, starting a node
# in-process for the command's duration when none is running (node/daemon.py).


# Commands that write: when they run their own node, it stays a moment to deliver.
WRITES = {"send", "ban", "unban", "channel", "community", "join"}


def _run_client(args: argparse.Namespace, body: Callable[[Any], Awaitable[int]]) -> int:
    from . import daemon
    from .control import ControlError

    settings = _settings(args)
    daemon.setup_logging(settings.log_level if args.verbose else "warning", settings.log_json)

    async def main() -> int:
        async with daemon.connect(settings, linger=args.command in WRITES) as client:
            return await body(client)

    try:
        return asyncio.run(main())
    except ControlError as exc:
        raise CommandError(exc.message) from None
    except daemon.NodeRunning as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(
            f"could not start a node for this command ({exc.strerror or exc}); "
            "check --listen and --port, or start one with: starling node"
        ) from None
    except KeyboardInterrupt:
        return 130


def _split_target(text: str) -> tuple[str, str]:
    """``COMMUNITY#channel`` -> (community, channel); the channel defaults to general."""
    community, sep, channel = text.rpartition("#")
    if not sep:
        return text, DEFAULT_CHANNEL
    if not community or not channel:
        raise CommandError(f"{text!r}: write COMMUNITY#channel, e.g. 'Book club#general'")
    return community, channel


def parse_duration(text: str) -> int:
    """``90``, ``90s``, ``30m``, ``12h``, ``7d`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    raw = text.strip().lower()
    scale = units.get(raw[-1:])
    number = raw[:-1] if scale else raw
    try:
        value = int(number)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; write e.g. 90s, 30m, 12h or 7d"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("a duration must be positive")
    return value * (scale or 1)


def _time(value: Any) -> str:
    """A message's time as the local clock shows it (milliseconds or seconds since 1970)."""
    if not isinstance(value, int | float):
        return "--:--"
    seconds = value / 1000 if value > 1e11 else value
    stamp = time.localtime(seconds)
    if time.strftime("%Y%m%d", stamp) == time.strftime("%Y%m%d"):
        return time.strftime("%H:%M", stamp)
    return time.strftime("%Y-%m-%d %H:%M", stamp)


def format_message(m: dict[str, Any]) -> str:
    """``[12:03] Alice: hello`` (names, never keys)."""
    name = m.get("author_name") or "someone"
    when = _time(m.get("time_ms"))
    text = m.get("text", "")
    if m.get("kind") == "message_deleted":
        text = "(deleted)"
    elif m.get("edited"):
        text = f"{text} (edited)"
    return f"[{when}] {name}: {text}"


def cmd_status(args: argparse.Namespace) -> int:
    from .daemon import status_summary

    async def body(client: Any) -> int:
        status = await client.call("status")
        if args.json:
            print(json.dumps(status, indent=2))
            return 0
        summary = status_summary(status)
        f = summary["fields"]
        if status["pid"] == os.getpid():
            print("node          not running (this command started one for a moment)")
        else:
            print(f"node          running (pid {status['pid']}, up {status['uptime_s']} s)")
        print(f"peer ID       {status['peer_id']}")
        print(f"bootstrap     {status['bootstrap']}")
        print(f"peers         {f['peers']} ({f['direct']} direct, {f['relayed']} relayed)")
        print(f"reachability  {f['reachability']} (NAT: {f['nat']})")
        print(f"DHT           {f['dht_mode']}, about {f['dht_size']} nodes")
        print(f"relays        {f['relay_reservations']} reservations")
        print(f"communities   {f['communities']}")
        return 0

    return _run_client(args, body)


def _display_name(args: argparse.Namespace) -> str:
    """--name (remembered for next time), else the config's or the remembered name."""
    if getattr(args, "name", None):
        args.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        config.save_state(args.data_dir, display_name=args.name)
        return str(args.name)
    settings = config.load(args.data_dir, getattr(args, "config", None))
    return settings.display_name or str(config.load_state(args.data_dir).get("display_name", ""))


def cmd_community_create(args: argparse.Namespace) -> int:
    display_name = _display_name(args)

    async def body(client: Any) -> int:
        made = await client.call("create", name=args.community_name)
        if display_name:
            await client.call("set_name", community=made["community"], display_name=display_name)
        _emit(
            args,
            made,
            f"Created the community {made['name']!r}.\n"
            f"Invite people with: starling invite {_quote(made['name'])}",
        )
        return 0

    return _run_client(args, body)


def cmd_community_list(args: argparse.Namespace) -> int:
    async def body(client: Any) -> int:
        found = (await client.call("communities"))["communities"]
        human = "\n".join(c["name"] for c in found) or (
            "You are in no community yet: starling community create NAME, or starling join LINK"
        )
        _emit(args, {"communities": found}, human)
        return 0

    return _run_client(args, body)


def cmd_invite(args: argparse.Namespace) -> int:
    async def body(client: Any) -> int:
        params: dict[str, Any] = {"community": args.community}
        if args.uses is not None:
            params["uses"] = args.uses
        if args.expires is not None:
            params["expires_s"] = args.expires
        if args.role is not None:
            params["role"] = args.role
        made = await client.call("invite", **params)
        if args.json:
            print(json.dumps(made, indent=2))
            return 0
        if args.qr:
            print(qr_text(made["link"]))
        print(made["link"])
        print(
            f"Anyone with this link can join {made['name']!r}: starling join '<link>'",
            file=sys.stderr,
        )
        return 0

    return _run_client(args, body)


def qr_text(link: str) -> str:
    """The link as a QR code drawn with half-block characters (two rows per line)."""
    import io

    import qrcode

    code = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_L)
    code.add_data(link)
    code.make(fit=True)
    out = io.StringIO()
    code.print_ascii(out=out, invert=True)
    return out.getvalue().rstrip("\n")


def cmd_join(args: argparse.Namespace) -> int:
    display_name = _display_name(args)

    async def body(client: Any) -> int:
        params = {"link": args.link}
        if display_name:
            params["display_name"] = display_name
        joined = await client.call("join", **params)
        _emit(
            args,
            joined,
            f"Joined {joined['name'] or 'the community'}.\n"
            f"Chat with: starling chat {_quote(joined['name'] or joined['community'])}",
        )
        return 0

    return _run_client(args, body)


def cmd_channel_add(args: argparse.Namespace) -> int:
    async def body(client: Any) -> int:
        made = await client.call("channel_add", community=args.community, name=args.name)
        _emit(args, made, f"Added #{made['channel']}.")
        return 0

    return _run_client(args, body)


def cmd_send(args: argparse.Namespace) -> int:
    community, channel = _split_target(args.target)

    async def body(client: Any) -> int:
        sent = await client.call("send", community=community, channel=channel, text=args.text)
        _emit(args, sent, f"Sent to #{sent['channel']}.")
        return 0

    return _run_client(args, body)


def cmd_read(args: argparse.Namespace) -> int:
    community, channel = _split_target(args.target)

    async def body(client: Any) -> int:
        events = None
        if args.follow:
            # Subscribe first (on a second connection: a stream takes one over), then read
            # the page, so nothing posted in between is missed; the page's messages are
            # not shown twice.
            from .control import ControlClient

            streamer = await ControlClient.connect(args.data_dir)
            _, events = await streamer.stream("follow", community=community, channel=channel)
        page = await client.call("read", community=community, channel=channel, limit=args.limit)
        messages = page["messages"]
        if not messages and not args.follow and not args.json:
            print(f"No messages in #{channel} yet.")
        for m in messages:
            print(json.dumps(m) if args.json else format_message(m), flush=True)
        if events is None:
            return 0
        shown = {m["message_id"] for m in messages}
        async for ev in events:
            if ev.get("kind") not in ("message_posted", "message_edited"):
                continue
            if ev["kind"] == "message_posted" and ev["message_id"] in shown:
                continue
            print(json.dumps(ev) if args.json else format_message(ev), flush=True)
        return 0

    return _run_client(args, body)


def cmd_members(args: argparse.Namespace) -> int:
    async def body(client: Any) -> int:
        got = await client.call("members", community=args.community)
        lines = []
        for m in got["members"]:
            flags = [m.get("role") or "member"]
            if m.get("online"):
                flags.append("online")
            if m.get("banned"):
                flags.append("banned")
            lines.append(f"{m.get('display_name') or '(no name yet)'}  ({', '.join(flags)})")
        _emit(args, got, "\n".join(lines))
        return 0

    return _run_client(args, body)


def cmd_ban(args: argparse.Namespace) -> int:
    async def body(client: Any) -> int:
        method = "unban" if args.command == "unban" else "ban"
        done = await client.call(method, community=args.community, member=args.member)
        who = done["member"].get("display_name") or args.member
        _emit(args, done, f"{'Unbanned' if method == 'unban' else 'Banned'} {who}.")
        return 0

    return _run_client(args, body)


def cmd_chat(args: argparse.Namespace) -> int:
    from . import chat

    settings = _settings(args)
    return chat.main(settings, args.community, args.name)


def _quote(text: str) -> str:
    return text if text.replace("-", "").replace("_", "").isalnum() else f"'{text}'"


def cmd_interop_verify(args: argparse.Namespace) -> int:
    from . import interop

    return interop.verify_main(args.paths, args.impl, args.json)


def cmd_interop_run(args: argparse.Namespace) -> int:
    from . import interop

    return interop.run_main(args.suite, args.file)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where the identity and state live (default: $STARLING_DATA_DIR or the "
        "per-user data directory)",
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")

    client = argparse.ArgumentParser(add_help=False, parents=[common])
    client.add_argument(
        "--config", type=Path, default=None, help="config file (default: DATA_DIR/config.toml)"
    )
    client.add_argument(
        "-v", "--verbose", action="store_true", help="show the node's log while the command runs"
    )

    net = client.add_argument_group(
        "network (for the node; a command uses them when it starts one itself)"
    )
    net.add_argument("--network", help="network name (default: starling)")
    net.add_argument("--listen", metavar="IP", help="address to bind (default: 0.0.0.0)")
    net.add_argument(
        "--port", type=int, help="UDP port (default: the last run's port, else any free one)"
    )
    net.add_argument(
        "--seed",
        dest="seeds",
        action="append",
        metavar="BOOTSTRAP",
        help="a bootstrap string of a running node (repeatable; added to the config's seeds)",
    )

    parser = argparse.ArgumentParser(
        prog="starling",
        description="Starling: peer-to-peer community chat with no server.",
        epilog="Exit codes: 0 done, 1 failed (the message says what to do), 2 bad command line. "
        "Commands use the node running on the data directory, or start one for their duration.",
    )
    parser.add_argument("--version", action="version", version=f"starling {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    node = sub.add_parser(
        "node",
        parents=[client],
        help="run the reference node",
        description="Run the node until Ctrl-C or SIGTERM. It prints its peer ID, listen "
        "addresses and a bootstrap string others can pass to --seed.",
    )
    reach = node.add_mutually_exclusive_group()
    reach.add_argument(
        "--public",
        dest="public",
        action="store_const",
        const=True,
        help="act as a DHT server (and relay) without waiting for reachability checks",
    )
    reach.add_argument(
        "--private", dest="public", action="store_const", const=False, help="stay a DHT client"
    )
    node.add_argument("--no-relay", action="store_true", help="never relay for others")
    node.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    node.add_argument("--log-level", choices=config.LOG_LEVELS, help="default: info")
    node.add_argument(
        "--status-interval",
        type=float,
        metavar="SECONDS",
        help="seconds between status lines, 0 for none (default: 60)",
    )
    node.set_defaults(func=cmd_node)

    p = sub.add_parser(
        "status",
        parents=[client],
        help="connection health: peers, direct or relayed, NAT, DHT",
        description="Show the node's connection health.",
    )
    p.set_defaults(func=cmd_status)

    community = sub.add_parser("community", help="create or list communities")
    c_sub = community.add_subparsers(dest="community_command", required=True, metavar="ACTION")
    p = c_sub.add_parser(
        "create",
        parents=[client],
        help="create a community (you become its owner)",
        description="Create a community with a #general channel; you are its owner.",
    )
    p.add_argument("community_name", metavar="NAME")
    p.add_argument("--name", metavar="DISPLAY_NAME", help="how others see you there")
    p.set_defaults(func=cmd_community_create)
    p = c_sub.add_parser("list", parents=[client], help="the communities you are in")
    p.set_defaults(func=cmd_community_list)

    p = sub.add_parser(
        "invite",
        parents=[client],
        help="make an invite link",
        description="Print an invite link (starling://join/...) for COMMUNITY.",
    )
    p.add_argument("community", metavar="COMMUNITY", help="its name (or ID)")
    p.add_argument("--uses", type=int, metavar="N", help="how many people may use it")
    p.add_argument("--expires", type=parse_duration, metavar="DURATION", help="e.g. 30m, 12h, 7d")
    p.add_argument("--role", metavar="ROLE", help="the role it gives (default: member)")
    p.add_argument("--qr", action="store_true", help="also draw it as a QR code")
    p.set_defaults(func=cmd_invite)

    p = sub.add_parser(
        "join",
        parents=[client],
        help="join a community with an invite link",
        description="Join the community an invite link is for.",
    )
    p.add_argument("link", metavar="LINK", help="starling://join/...")
    p.add_argument("--name", metavar="DISPLAY_NAME", help="how others see you there")
    p.set_defaults(func=cmd_join)

    channel = sub.add_parser("channel", help="channels of a community")
    ch_sub = channel.add_subparsers(dest="channel_command", required=True, metavar="ACTION")
    p = ch_sub.add_parser("add", parents=[client], help="add a channel")
    p.add_argument("community", metavar="COMMUNITY")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_channel_add)

    p = sub.add_parser(
        "send",
        parents=[client],
        help="post a message",
        description="Post TEXT to a channel: starling send 'Book club#general' 'hello'.",
    )
    p.add_argument("target", metavar="COMMUNITY#channel")
    p.add_argument("text", metavar="TEXT")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser(
        "read",
        parents=[client],
        help="show a channel's messages",
        description="Show the latest messages of a channel; --follow keeps showing new ones.",
    )
    p.add_argument("target", metavar="COMMUNITY#channel")
    p.add_argument("--follow", "-f", action="store_true", help="keep showing new messages")
    p.add_argument("--limit", type=int, default=100, metavar="N", help="default: 100")
    p.set_defaults(func=cmd_read)

    p = sub.add_parser("members", parents=[client], help="who is in a community")
    p.add_argument("community", metavar="COMMUNITY")
    p.set_defaults(func=cmd_members)

    for name, what in (("ban", "ban a member"), ("unban", "lift a ban")):
        p = sub.add_parser(name, parents=[client], help=what)
        p.add_argument("community", metavar="COMMUNITY")
        p.add_argument("member", metavar="MEMBER", help="their display name (or peer ID)")
        p.set_defaults(func=cmd_ban)

    p = sub.add_parser(
        "chat",
        parents=[client],
        help="chat in the terminal",
        description="Interactive chat. Type to send; /help lists the commands.",
    )
    p.add_argument("community", metavar="COMMUNITY", nargs="?")
    p.add_argument("--name", metavar="DISPLAY_NAME", help="how others see you")
    p.set_defaults(func=cmd_chat)

    ident = sub.add_parser("id", help="this peer's identity")
    id_sub = ident.add_subparsers(dest="id_command", required=True, metavar="ACTION")
    p = id_sub.add_parser("new", parents=[common], help="create a new identity")
    p.set_defaults(func=cmd_id_new)
    p = id_sub.add_parser("show", parents=[common], help="show this peer's ID")
    p.set_defaults(func=cmd_id_show)

    interop = sub.add_parser("interop", help="conformance test vectors")
    io_sub = interop.add_subparsers(dest="interop_command", required=True, metavar="ACTION")
    p = io_sub.add_parser(
        "verify", help="check an implementation (this one by default) against vector files"
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="vector files or directories")
    p.add_argument("--impl", metavar="CMD", help="external implementation's harness command")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_interop_verify)
    p = io_sub.add_parser("run", help="harness contract: run one suite file, print JSON results")
    p.add_argument("suite")
    p.add_argument("file")
    p.set_defaults(func=cmd_interop_run)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("starling")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "data_dir"):
        args.data_dir_given = args.data_dir is not None
        if args.data_dir is None:
            args.data_dir = keyfile.default_data_dir()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (CommandError, StarlingError, ConfigError) as exc:
        print(f"starling: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
