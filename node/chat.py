"""``starling chat``: the terminal chat a person uses.

Theory of operation
-------------------
The chat is a client of the node like every other command: it talks to the
data directory's node over the control socket (node/control.py), starting a
node in-process when none runs. It keeps two connections: one for requests
(send, members, invite ...) and one streaming the community's new messages.

:class:`ChatApp` holds everything the chat decides (which community and
channel, what a typed line means, how a message is shown) and writes through a
``show`` callback, so it does not care what the terminal is. The front end is
prompt_toolkit when both ends are a terminal (an input line that stays at the
bottom while messages scroll above it, and a bottom bar with the connection
indicator) and plain lines otherwise (pipes, scripts).

People see names, channels and times; keys and peer IDs appear only in
``--json`` output and diagnostics, never in the chat.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import Settings, load_state, save_state
from .control import ControlClient, ControlError

HELP = """Type a message and press Enter to send it to the current channel.
  /join #channel     switch to a channel (/join NAME switches community)
  /channels          the community's channels
  /invite            make an invite link for this community
  /members           who is here (online or not)
  /ban NAME          ban a member (owners and moderators)
  /name NEW NAME     change how others see you here
  /history           show earlier messages of this channel
  /quit              leave the chat (Ctrl-D works too)"""


def _format(m: dict[str, Any]) -> str:
    from .cli import format_message

    return format_message(m)


class ChatApp:
    """What the chat does with typed lines and arriving messages."""

    def __init__(
        self,
        client: ControlClient,
        show: Callable[[str], None],
        display_name: str,
        data_dir: Path | None = None,
    ) -> None:
        self.client = client
        self.data_dir = data_dir
        self._follower: asyncio.Task[None] | None = None
        self._stream: ControlClient | None = None
        self._shown: set[str] = set()
        self.show = show
        self.display_name = display_name
        self.community: dict[str, Any] | None = None
        self.channel = "general"
        self.peers = 0
        self.online = False
        self.done = False
        self._peer_id: str | None = None

    # -- status --------------------------------------------------------------------------

    def indicator(self) -> str:
        where = ""
        if self.community is not None:
            where = f"{self.community['name']} #{self.channel} | "
        peers = f"{self.peers} peer{'' if self.peers == 1 else 's'}"
        dot = f"● online, {peers}" if self.online else "○ offline (no peers yet)"
        return f"{where}{dot} | /help"

    async def refresh(self) -> None:
        status = await self.client.call("status")
        sessions = (status.get("host") or {}).get("sessions") or []
        self.peers = len(sessions)
        self.online = self.peers > 0

    # -- communities ---------------------------------------------------------------------

    async def choose(self, wanted: str | None) -> bool:
        """Pick the community to show; False if there is none yet (the user is told why)."""
        found = (await self.client.call("communities"))["communities"]
        if wanted:
            try:
                self.community = await self._find(wanted)
            except ControlError as exc:
                self.show(exc.message)
                return False
        elif len(found) == 1:
            self.community = found[0]
        elif not found:
            self.show(
                "You are in no community yet. Paste an invite link (starling://join/...) "
                "to join one, or type /create NAME to start your own."
            )
            return False
        else:
            self.show("Your communities: " + ", ".join(c["name"] for c in found))
            self.show("Type /join NAME to open one.")
            return False
        await self._enter()
        return True

    async def _find(self, wanted: str) -> dict[str, Any]:
        members = await self.client.call("members", community=wanted)
        return {"community": members["community"], "name": members["name"]}

    async def _enter(self) -> None:
        assert self.community is not None
        community = self.community["community"]
        # Tell the community our name once (a profile entry), not on every start.
        mine = await self.client.call("members", community=community)
        me = await self._me()
        if any(
            m["peer_id"] == me and m["display_name"] != self.display_name for m in mine["members"]
        ):
            with contextlib.suppress(ControlError):
                await self.client.call(
                    "set_name", community=community, display_name=self.display_name
                )
        await self.follow(community)
        self.show(f"── {self.community['name']} #{self.channel} ──")
        await self.history()

    async def follow(self, community: str) -> None:
        """Live events of ``community`` on a connection of their own (a stream takes one
        over), subscribed before history is read so nothing falls in between."""
        await self.unfollow()
        if self.data_dir is None:
            return
        self._stream = await ControlClient.connect(self.data_dir)
        _, events = await self._stream.stream("follow", community=community)

        async def pump() -> None:
            async for ev in events:
                self.on_event(ev)

        self._follower = asyncio.ensure_future(pump())
        self._follower.add_done_callback(_lost(self))

    async def unfollow(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            self._follower = None
        if self._stream is not None:
            await self._stream.close()
            self._stream = None

    async def _me(self) -> str:
        if self._peer_id is None:
            self._peer_id = str((await self.client.call("status"))["peer_id"])
        return self._peer_id

    async def history(self, limit: int = 50) -> None:
        assert self.community is not None
        page = await self.client.call(
            "read", community=self.community["community"], channel=self.channel, limit=limit
        )
        if not page["messages"]:
            self.show(f"No messages in #{self.channel} yet. Say hello!")
        for m in page["messages"]:
            self._shown.add(m["message_id"])
            self.show(_format(m))

    def on_event(self, ev: dict[str, Any]) -> None:
        """A live event of the current community (``follow``'s stream)."""
        kind = ev.get("kind", "")
        who = ev.get("author_name") or ev.get("display_name") or "someone"
        if kind.startswith("message_"):
            channel = ev.get("channel", self.channel)
            if channel != self.channel:
                if kind == "message_posted":
                    self.show(f"(new message in #{channel}: /join #{channel} to read it)")
            elif kind == "message_deleted":
                self.show(f"(a message by {who} was deleted)")
            elif kind == "message_edited" or ev.get("message_id") not in self._shown:
                self._shown.add(str(ev.get("message_id")))
                self.show(_format(ev))
        elif kind == "member_joined":
            self.show(f"* {who} joined")
        elif kind == "member_banned":
            self.show(f"* {who} was banned")
        elif kind == "member_unbanned":
            self.show(f"* {who} is no longer banned")

    # -- typed lines ---------------------------------------------------------------------

    async def handle(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        try:
            if line.startswith("starling://join/"):
                await self._join_link(line)
            elif line.startswith("/"):
                await self._command(line)
            elif self.community is None:
                self.show("Join a community first: paste an invite link, or /create NAME.")
            else:
                await self.client.call(
                    "send",
                    community=self.community["community"],
                    channel=self.channel,
                    text=line,
                )
        except ControlError as exc:
            self.show(f"! {exc.message}")

    async def _join_link(self, link: str) -> None:
        self.show("Joining…")
        joined = await self.client.call("join", link=link, display_name=self.display_name)
        self.community = {"community": joined["community"], "name": joined["name"]}
        self.channel = "general"
        self.show(f"Joined {joined['name']}.")
        await self._enter()

    async def _command(self, line: str) -> None:
        command, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        command = command.lower()
        if command in ("quit", "exit", "q"):
            self.done = True
        elif command == "help":
            self.show(HELP)
        elif command == "create":
            if not arg:
                self.show("Usage: /create NAME")
                return
            made = await self.client.call("create", name=arg)
            self.community = {"community": made["community"], "name": made["name"]}
            self.channel = "general"
            await self._enter()
        elif command == "join":
            await self._join(arg)
        elif self.community is None:
            self.show("Join a community first: paste an invite link, or /create NAME.")
        else:
            await self._community_command(command, arg)

    async def _join(self, arg: str) -> None:
        if arg.startswith("starling://join/"):
            await self._join_link(arg)
        elif arg.startswith("#"):
            if self.community is None:
                self.show("Join a community first: paste an invite link, or /create NAME.")
                return
            previous, self.channel = self.channel, arg[1:]
            try:
                await self.client.call(
                    "read", community=self.community["community"], channel=self.channel, limit=1
                )
            except ControlError:
                self.channel = previous  # no such channel: stay (the error is shown)
                raise
            self.show(f"── {self.community['name']} #{self.channel} ──")
            await self.history()
        elif arg:
            self.community = await self._find(arg)
            self.channel = "general"
            await self._enter()
        else:
            self.show("Usage: /join #channel, /join COMMUNITY or /join starling://join/...")

    async def _community_command(self, command: str, arg: str) -> None:
        assert self.community is not None
        community = self.community["community"]
        if command == "invite":
            made = await self.client.call("invite", community=community)
            self.show(f"Invite link for {self.community['name']} (share it with people you trust):")
            self.show(made["link"])
        elif command == "members":
            got = await self.client.call("members", community=community)
            for m in got["members"]:
                marks = [m.get("role") or "member"]
                marks.append("online" if m.get("online") else "offline")
                if m.get("banned"):
                    marks.append("banned")
                self.show(f"  {m.get('display_name') or '(no name yet)'}  ({', '.join(marks)})")
        elif command == "ban":
            if not arg:
                self.show("Usage: /ban NAME")
                return
            done = await self.client.call("ban", community=community, member=arg)
            self.show(f"Banned {done['member'].get('display_name') or arg}.")
        elif command == "name":
            if not arg:
                self.show("Usage: /name NEW NAME")
                return
            await self.client.call("set_name", community=community, display_name=arg)
            self.display_name = arg
            self.show(f"Others now see you as {arg}.")
        elif command == "channels":
            view = (await self.client.call("communities"))["communities"]
            mine = [c for c in view if c["community"] == community]
            channels = mine[0].get("channels") if mine else None
            self.show("Channels: " + ", ".join(f"#{c}" for c in (channels or [self.channel])))
        elif command == "history":
            await self.history(limit=200)
        else:
            self.show(f"Unknown command /{command}; /help lists them.")


# ----------------------------------------------------------------------------- front ends


def main(settings: Settings, community: str | None, name: str | None) -> int:
    from . import daemon

    daemon.setup_logging("warning", settings.log_json)
    try:
        return asyncio.run(_run(settings, community, name))
    except KeyboardInterrupt:
        return 0
    except (daemon.NodeRunning, OSError) as exc:
        print(f"starling: error: {exc}", file=sys.stderr)
        return 1
    except ControlError as exc:
        print(f"starling: error: {exc.message}", file=sys.stderr)
        return 1


def _is_tty() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


async def _run(settings: Settings, community: str | None, name: str | None) -> int:
    from . import daemon

    display_name = (
        name or settings.display_name or str(load_state(settings.data_dir).get("display_name", ""))
    )
    lines = _TerminalInput() if _is_tty() else _PipeInput()
    await lines.start()
    try:
        if not display_name:
            print("Welcome to Starling! What name should others see? ", end="", flush=True)
            display_name = (await lines.read("name> ") or "").strip()
            if not display_name:
                return 0
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        save_state(settings.data_dir, display_name=display_name)
        print("Connecting…", flush=True)
        async with daemon.connect(settings) as client:
            app = ChatApp(client, lines.show, display_name, settings.data_dir)
            lines.toolbar = app.indicator
            try:
                return await _loop(app, lines, community)
            finally:
                await app.unfollow()
    finally:
        lines.stop()


async def _loop(app: ChatApp, lines: _Input, community: str | None) -> int:
    async def refresh() -> None:
        while True:
            with contextlib.suppress(ControlError):
                await app.refresh()
            lines.invalidate()
            await asyncio.sleep(2)

    refresher = asyncio.ensure_future(refresh())
    try:
        app.show("Type /help for commands.")
        await app.choose(community)
        while not app.done:
            line = await lines.read(lambda: f"{app.display_name}> ")
            if line is None:
                break
            await app.handle(line)
    finally:
        refresher.cancel()
    return 0


def _lost(app: ChatApp) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            app.show(f"! live messages stopped: {task.exception()}; restart the chat")

    return done


class _Input:
    toolbar: Callable[[], str] | None = None

    async def start(self) -> None:
        pass

    async def read(self, prompt: Any) -> str | None:
        raise NotImplementedError

    def show(self, text: str) -> None:
        print(text, flush=True)

    def invalidate(self) -> None:
        pass

    def stop(self) -> None:
        pass


class _PipeInput(_Input):
    """Plain lines on stdin (scripts, pipes): no prompt, no toolbar."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._last = ""

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(sys.stdin.fileno(), self._readable)

    def _readable(self) -> None:
        line = sys.stdin.readline()
        self._queue.put_nowait(line if line else None)
        if not line:
            asyncio.get_running_loop().remove_reader(sys.stdin.fileno())

    async def read(self, prompt: Any) -> str | None:
        return await self._queue.get()

    def invalidate(self) -> None:
        # Say so when the connection changes, as the toolbar would.
        if self.toolbar is not None:
            state = self.toolbar().split(" | ")
            online = next((s for s in state if "online" in s or "offline" in s), "")
            if online and online.split(",")[0] != self._last:
                self._last = online.split(",")[0]
                print(f"[{online}]", flush=True)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(sys.stdin.fileno())


class _TerminalInput(_Input):
    """prompt_toolkit: the input line stays at the bottom, messages scroll above it."""

    def __init__(self) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.patch_stdout import patch_stdout

        self._session: Any = PromptSession()
        self._patch = patch_stdout(raw=True)

    async def start(self) -> None:
        self._patch.__enter__()

    async def read(self, prompt: Any) -> str | None:
        try:
            bar = self.toolbar
            return str(await self._session.prompt_async(prompt, bottom_toolbar=bar))
        except EOFError:
            return None
        except KeyboardInterrupt:
            return None

    def invalidate(self) -> None:
        app = self._session.app
        if app.is_running:
            app.invalidate()

    def stop(self) -> None:
        self._patch.__exit__(None, None, None)
