"""``starling chat`` in a real pseudo-terminal, typed into as a person would."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

from cliproc import STARLING, NodeProcess, cli, cli_json, wait_for

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Z0-9]|\x1b[=>]|\r")


class Terminal:
    """``starling chat`` on a pty; ``screen`` is everything it printed, escapes removed."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 160, 0, 0))
        env = {**os.environ, "TERM": "xterm"}
        self.proc = subprocess.Popen(
            [*STARLING, "chat", *args, "--data-dir", str(data_dir)],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.raw = b""

    @property
    def screen(self) -> str:
        return ANSI.sub("", self.raw.decode("utf-8", "replace"))

    def pump(self) -> None:
        while True:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                return
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            # Answer cursor position requests as a terminal does (row 1: room below).
            for _ in range(chunk.count(b"\x1b[6n")):
                os.write(self.master, b"\x1b[1;1R")
            self.raw += chunk

    def expect(self, text: str, after: int = 0) -> int:
        """Wait until ``text`` appears past offset ``after``; returns where it ends."""

        def seen() -> int:
            self.pump()
            found = self.screen.find(text, after)
            return found + len(text) if found >= 0 else 0

        try:
            return int(wait_for(seen, f"{text!r} on the chat screen"))
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen ends with:\n{self.screen[-3000:]}") from None

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")

    def close(self) -> int:
        try:
            deadline = time.monotonic() + 20
            while self.proc.poll() is None and time.monotonic() < deadline:
                self.pump()
            if self.proc.poll() is None:
                self.proc.kill()
            return self.proc.wait()
        finally:
            os.close(self.master)


def test_chat_in_a_terminal(tmp_path: Path) -> None:
    a_dir, b_dir, c_dir = tmp_path / "alice", tmp_path / "bob", tmp_path / "carol"
    alice, bob = NodeProcess(a_dir), NodeProcess(b_dir)
    chat = carol = None
    try:
        cli_json(a_dir, "community", "create", "Book club", "--name", "Alice")
        cli_json(a_dir, "channel", "add", "Book club", "random")
        cli_json(a_dir, "send", "Book club#general", "welcome, everyone")
        link = cli_json(a_dir, "invite", "Book club")["link"]
        assert cli(b_dir, "join", link, "--name", "Bob").returncode == 0

        # Bob opens the chat: history, then live messages with names and times.
        chat = Terminal(b_dir)
        at = chat.expect("── Book club #general ──")
        at = chat.expect("Alice: welcome, everyone", at)
        assert re.search(r"\[\d\d:\d\d\] Alice: welcome, everyone", chat.screen)
        at = chat.expect("online, 1 peer |", 0)  # the connection indicator

        chat.type("hello from the chat")
        at = chat.expect("Bob: hello from the chat", at)

        wait_for(
            lambda: "Bob: hello from the chat" in cli(a_dir, "read", "Book club#general").stdout,
            "Alice to receive Bob's chat message",
        )
        assert cli(a_dir, "send", "Book club#general", "hi Bob!").returncode == 0
        at = chat.expect("Alice: hi Bob!", at)

        chat.type("/members")
        at = chat.expect("Alice  (owner, online)", at)
        chat.type("/join #nosuch")
        at = chat.expect("! ", at)
        at = chat.expect("COMMUNITY_UNKNOWN_CHANNEL", at)
        chat.type("/join #random")
        at = chat.expect("── Book club #random ──", at)
        at = chat.expect("No messages in #random yet.", at)
        assert cli(a_dir, "send", "Book club#general", "over here").returncode == 0
        at = chat.expect("(new message in #general", at)

        chat.type("/invite")
        at = chat.expect("starling://join/", at)
        invite = re.findall(r"starling://join/\S+", chat.screen)[-1]

        # Carol has never run Starling: the chat asks her name, she pastes the link.
        carol = Terminal(c_dir)
        carol.expect("What name should others see?")
        carol.type("Carol")
        carol.expect("You are in no community yet.")
        carol.type(invite)
        c_at = carol.expect("Joined Book club.")
        c_at = carol.expect("Alice: over here", c_at)
        at = chat.expect("* Carol joined", at)

        chat.type("/ban Carol")  # Bob is a member, not a moderator: refused, clearly
        at = chat.expect("! ", at)
        carol.type("/quit")
        assert carol.close() == 0
        carol = None

        assert "sp1" not in chat.screen and "sc1" not in chat.screen  # no keys in the chat
        chat.type("/quit")
        assert chat.close() == 0
        chat = None
    finally:
        for terminal in (chat, carol):
            if terminal is not None:
                terminal.proc.kill()
                terminal.close()
        assert alice.stop() == 0
        assert bob.stop() == 0
