"""The ``starling`` command.

Exit codes: 0 success, 1 the command failed (the message says why and what to
do), 2 the command line itself was wrong (argparse's usage error).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from starling.proto.errors import StarlingError
from starling.proto.identity import PrivateKey

from . import keyfile


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


def cmd_node(args: argparse.Namespace) -> int:
    key, created = keyfile.load_or_create(args.data_dir)
    _emit(
        args,
        {**_identity_json(args, key), "created": created},
        ("Created a new node identity.\n" if created else "")
        + f"peer ID  {key.peer_id}\ndata dir {args.data_dir}\n"
        "This release has the node's identity only; networking arrives with the next releases.",
    )
    return 0


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

    parser = argparse.ArgumentParser(
        prog="starling", description="Starling: peer-to-peer community chat with no server."
    )
    parser.add_argument("--version", action="version", version=f"starling {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    node = sub.add_parser("node", parents=[common], help="run the reference node")
    node.set_defaults(func=cmd_node)

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
    except (CommandError, StarlingError) as exc:
        print(f"starling: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
