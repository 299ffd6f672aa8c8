"""A change source that invents commits on a timer, so the demo builds without a repository.

Used by the demo's ``master.cfg``; it goes through ``master.data.updates.addChange`` exactly as
a real poller does, so the firehose sees ordinary ``change.new`` events and scheduled builds with
a branch and a revision.
"""

from __future__ import annotations

import hashlib
import random
import time
from typing import Any

from buildbot.changes.base import ReconfigurablePollingChangeSource
from twisted.internet import defer

AUTHORS = ("Ada <ada@example.invalid>", "Linus <linus@example.invalid>", "Grace <grace@example.invalid>")
FILES = ("src/main.c", "src/util.c", "tests/test_main.py", "README.md", "Makefile")
MESSAGES = ("Fix off-by-one in parser", "Speed up the cache", "Add tests for the scheduler",
            "Refactor build script", "Update documentation")


class FakeCommits(ReconfigurablePollingChangeSource):
    """Adds one invented change per poll, on ``main`` mostly and on ``try`` sometimes."""

    compare_attrs = ("name", "pollInterval")

    def __init__(self, name: str = "fake-commits", pollInterval: int = 15) -> None:
        super().__init__(name=name, pollInterval=pollInterval)

    def checkConfig(self, name: str = "fake-commits", pollInterval: int = 15, **kw: Any) -> None:
        super().checkConfig(name=name, pollInterval=pollInterval, pollAtLaunch=True)

    def reconfigService(self, name: str = "fake-commits", pollInterval: int = 15, **kw: Any) -> Any:
        return super().reconfigService(name=name, pollInterval=pollInterval, pollAtLaunch=True)

    @defer.inlineCallbacks
    def poll(self) -> Any:
        branch = "try" if random.random() < 0.3 else "main"
        rev = hashlib.sha1(f"{time.time()}{random.random()}".encode()).hexdigest()
        yield self.master.data.updates.addChange(
            author=random.choice(AUTHORS),
            files=random.sample(FILES, 2),
            comments=random.choice(MESSAGES),
            revision=rev,
            when_timestamp=int(time.time()),
            branch=branch,
            revlink=f"https://git.example.invalid/demo/commit/{rev}",
            repository="https://git.example.invalid/demo.git",
            project="demo",
            codebase="",
            src="git",
        )
