"""The whole journey through real NAT, driven only by the ``starling`` command (issue #8).

``sudo python -m bench journey --json PATH``: a public bootstrap/relay node and three
people behind three different NATs (endpoint-independent, port-restricted, symmetric)
in the namespace lab (tests/lab/), each with a running ``starling node`` and typing
commands as a person would:

1. A creates a community, posts a welcome and makes an invite; B joins through it
   (``join_to_first_message_ms``: from starting ``starling join`` until A's welcome
   shows in B's ``starling read``);
2. A goes offline; C joins with B's invite; A comes back;
3. everyone chats (``--messages`` each, typed into ``starling chat``);
4. C goes offline while A and B write half as many more; C returns and catches up;
5. A bans B; B's later posts are refused (B's node refuses them once it knows; A and
   C never show them), and A and C end with identical channel views.

Every step is checked (an ``AssertionError`` names the one that failed); the JSON has
the timings, the sessions' paths and ``node_rss_mb_idle`` (a person's node, idle, after
the run). ``tests/test_journey.py`` runs the same scenario in CI (as root).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STARLING = [sys.executable, "-m", "starling.node"]
COMMUNITY = "Lab club"
CHANNEL = f"{COMMUNITY}#general"
TARGET_JOIN_MS = 3000.0
TARGET_RSS_MB = 80.0


def _lab() -> Any:
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import lab.netlab

    return lab.netlab


def wait_for(predicate: Callable[[], Any], what: str, limit: float = 60.0) -> Any:
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


class Person:
    """A person at one lab host: a data directory, a node they start and stop, commands."""

    def __init__(self, host: Any, name: str, data_dir: Path, port: int, seeds: list[str]) -> None:
        self.host = host
        self.name = name
        self.data_dir = data_dir
        self.port = port
        self.seeds = seeds
        self.node: subprocess.Popen[str] | None = None
        self.banner: dict[str, Any] = {}

    def start(self, *extra: str) -> dict[str, Any]:
        args = ["node", "--data-dir", str(self.data_dir), "--listen", "0.0.0.0"]
        args += ["--port", str(self.port), "--json", "--status-interval", "5"]
        for seed in self.seeds:
            args += ["--seed", seed]
        log = (self.data_dir.parent / f"{self.name}.log").open("a")
        self.node = self.host.popen(
            [*STARLING, *args, *extra], stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO
        )
        log.close()
        assert self.node.stdout is not None
        line = self.node.stdout.readline()
        assert line, f"{self.name}'s node exited: {self.log()[-2000:]}"
        self.banner = json.loads(line)
        return self.banner

    def stop(self) -> int:
        assert self.node is not None
        self.node.send_signal(signal.SIGTERM)
        code = self.node.wait(30)
        if self.node.stdout is not None:
            self.node.stdout.close()
        self.node = None
        return code

    def log(self) -> str:
        path = self.data_dir.parent / f"{self.name}.log"
        return path.read_text() if path.exists() else ""

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [*STARLING, *args, "--data-dir", str(self.data_dir)]
        result: subprocess.CompletedProcess[str] = self.host.run(argv, check=False, input=input)
        return result

    def ok(self, *args: str) -> Any:
        out = self.cli(*args, "--json")
        assert out.returncode == 0, f"{self.name}: starling {' '.join(args)}: {out.stderr}"
        return json.loads(out.stdout)

    def chat(self, lines: list[str]) -> str:
        """Type ``lines`` into ``starling chat`` (then /quit), as a person at a keyboard."""
        out = self.cli("chat", COMMUNITY, input="\n".join([*lines, "/quit"]) + "\n")
        assert out.returncode == 0, f"{self.name}'s chat: {out.stderr}"
        return out.stdout

    def view(self) -> list[tuple[str, str, str]]:
        out = self.cli("read", CHANNEL, "--json", "--limit", "5000")
        assert out.returncode == 0, f"{self.name}: read: {out.stderr}"
        messages = [json.loads(line) for line in out.stdout.splitlines()]
        return [(m["message_id"], m["author_name"] or "", m["text"]) for m in messages]

    def status(self) -> dict[str, Any]:
        return dict(self.ok("status"))

    def rss_mb(self) -> float:
        pid = self.banner["pid"]
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        raise AssertionError("no VmRSS")


def texts(view: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    return [(author, text) for _, author, text in view]


def run(delay_ms: int = 20, messages: int = 100, workdir: Path | None = None) -> dict[str, Any]:
    """The journey; returns the figures, raises AssertionError at the first failed step."""
    netlab = _lab()
    result: dict[str, Any] = {"delay_ms": delay_ms, "messages_each": messages, "steps": []}
    own_dir = workdir is None
    root = Path(tempfile.mkdtemp(prefix="starling-journey-")) if own_dir else workdir
    assert root is not None

    def step(name: str, **figures: Any) -> None:
        result["steps"].append({"step": name, **figures})

    with netlab.Lab(delay_ms=delay_ms) as lab:
        result["lab"] = {"delay_ms": lab.delay_ms, "note": lab.delay_note}
        result["delay"] = {"ms": lab.delay_ms, "by": lab.delay_by}
        boot_host = lab.internet_host("boot")
        hosts = {
            "alice": lab.host("a", lab.router("eim", netlab.Nat.EIM)),
            "bob": lab.host("b", lab.router("prc", netlab.Nat.PORT_PRESERVING)),
            "carol": lab.host("c", lab.router("sym", netlab.Nat.SYMMETRIC)),
        }
        boot = Person(boot_host, "boot", root / "boot", 4433, [])
        boot.start("--public")
        seed = boot.banner["bootstrap"]
        assert seed.endswith(f"@{boot_host.address}:4433"), seed
        people = {
            name: Person(host, name, root / name, 4400 + i, [seed])
            for i, (name, host) in enumerate(hosts.items())
        }
        alice, bob, carol = people["alice"], people["bob"], people["carol"]
        try:
            for person in people.values():
                person.start()
            for person in people.values():
                wait_for(
                    lambda p=person: p.status()["host"]["relay"]["reservations_held"],
                    f"{person.name}'s relay reservation",
                )
            step(
                "nodes up",
                reachability={p.name: p.status()["host"]["reachability"] for p in people.values()},
            )

            # 1. A creates, posts, invites; B joins and sees the welcome.
            alice.ok("community", "create", COMMUNITY, "--name", "Alice")
            alice.ok("send", CHANNEL, "welcome to the lab")
            link = alice.ok("invite", COMMUNITY)["link"]
            started = time.monotonic()
            joined = bob.cli("join", link, "--name", "Bob")
            assert joined.returncode == 0, f"bob: join: {joined.stderr}"
            wait_for(
                lambda: ("Alice", "welcome to the lab") in texts(bob.view()), "B to see the welcome"
            )
            join_ms = round((time.monotonic() - started) * 1000, 1)
            result["join_to_first_message_ms"] = join_ms
            step("B joined through A's invite", join_to_first_message_ms=join_ms)

            # 2. A goes offline; C joins with B's invite; A comes back.
            assert alice.stop() == 0
            link_b = bob.ok("invite", COMMUNITY)["link"]
            started = time.monotonic()
            joined = carol.cli("join", link_b, "--name", "Carol")
            assert joined.returncode == 0, f"carol: join: {joined.stderr}"
            wait_for(
                lambda: ("Alice", "welcome to the lab") in texts(carol.view()),
                "C to see the welcome (from B, with A offline)",
            )
            join_c_ms = round((time.monotonic() - started) * 1000, 1)
            result["join_c_to_first_message_ms"] = join_c_ms
            step("C joined through B's invite, A offline", join_to_first_message_ms=join_c_ms)
            alice.start()

            # 3. Everyone chats.
            lines = {
                p.name: [f"{p.name} says {i}" for i in range(messages)] for p in people.values()
            }
            started = time.monotonic()
            with contextlib.ExitStack():
                import concurrent.futures

                with concurrent.futures.ThreadPoolExecutor(3) as pool:
                    list(pool.map(lambda p: p.chat(lines[p.name]), people.values()))
            expected = 1 + 3 * messages
            for person in people.values():
                try:
                    wait_for(
                        lambda p=person: len(p.view()) >= expected,
                        f"{person.name} to hold all {expected} messages",
                        limit=120,
                    )
                except AssertionError as exc:
                    # Say which messages are missing, whose they are, and the person's
                    # sessions: what a failure in CI needs to be understood.
                    held = {text for _, text in texts(person.view())}
                    missing = [t for ls in lines.values() for t in ls if t not in held]
                    raise AssertionError(
                        f"{exc}: {len(missing)} missing, e.g. {missing[:5]} ... {missing[-5:]}; "
                        f"status {json.dumps(person.status())}"
                    ) from None
            step("all chatted", messages=expected, ms=round((time.monotonic() - started) * 1000, 1))

            # 4. C offline; A and B write more; C returns and catches up.
            assert carol.stop() == 0
            more = messages // 2
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                list(
                    pool.map(
                        lambda p: p.chat([f"{p.name} later {i}" for i in range(more)]), (alice, bob)
                    )
                )
            expected += 2 * more
            wait_for(
                lambda: len(alice.view()) >= expected and len(bob.view()) >= expected,
                "A and B in step",
            )
            started = time.monotonic()
            carol.start()
            wait_for(lambda: len(carol.view()) >= expected, "C to catch up", limit=120)
            catch_up_ms = round((time.monotonic() - started) * 1000, 1)
            result["catch_up_ms"] = catch_up_ms
            step("C caught up", messages=expected, catch_up_ms=catch_up_ms)

            # 5. A bans B; B's later posts are refused.
            alice.ok("ban", COMMUNITY, "Bob")
            bob.chat(["posted as the ban spreads"])  # concurrent with the ban, or refused

            def bob_refused() -> bool:
                out = bob.cli("send", CHANNEL, "after the ban")
                return out.returncode == 1 and "may not post" in out.stderr

            wait_for(bob_refused, "B's node to refuse B's posts")
            wait_for(
                lambda: any(
                    m["display_name"] == "Bob" and m["banned"]
                    for m in carol.ok("members", COMMUNITY)["members"]
                ),
                "C to learn of the ban",
            )
            time.sleep(2)  # let anything B's node had in flight arrive
            final_a, final_c = alice.view(), carol.view()
            late = {"after the ban", "posted as the ban spreads"}
            assert not [t for a, t in texts(final_a) if a == "Bob" and t in late], (
                "A shows B's posts"
            )
            assert not [t for a, t in texts(final_c) if a == "Bob" and t in late], (
                "C shows B's posts"
            )
            assert final_a == final_c, "A and C hold different channel views"
            step("B banned; A and C identical", messages=len(final_a))
            result["final_messages"] = len(final_a)
            result["sessions"] = {
                p.name: [(s["peer_id"][:12], s["path"]) for s in p.status()["host"]["sessions"]]
                for p in people.values()
            }
            time.sleep(5)
            result["node_rss_mb_idle"] = max(p.rss_mb() for p in people.values())
            result["boot_rss_mb_idle"] = boot.rss_mb()
        except BaseException:
            for person in [*people.values(), boot]:
                sys.stderr.write(f"--- {person.name} log (tail) ---\n{person.log()[-3000:]}\n")
                if person.node is not None:
                    with contextlib.suppress(Exception):
                        sys.stderr.write(f"--- {person.name} status ---\n")
                        sys.stderr.write(json.dumps(person.status()) + "\n")
            raise
        finally:
            for person in [*people.values(), boot]:
                if person.node is not None:
                    with contextlib.suppress(Exception):
                        person.stop()
            if own_dir:
                shutil.rmtree(root, ignore_errors=True)
    result["targets"] = {
        "join_to_first_message_ms": TARGET_JOIN_MS,
        "join_met": result["join_to_first_message_ms"] <= TARGET_JOIN_MS,
        "node_rss_mb_idle": TARGET_RSS_MB,
        "rss_met": result["node_rss_mb_idle"] <= TARGET_RSS_MB,
    }
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench journey", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--json", metavar="PATH", help="write the figures here")
    parser.add_argument("--delay-ms", type=int, default=20, help="one-way delay into the core")
    parser.add_argument("--messages", type=int, default=100, help="messages each person types")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the journey runs in the NAT lab: run it as root", file=sys.stderr)
        return 1
    result = run(args.delay_ms, args.messages)
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0
