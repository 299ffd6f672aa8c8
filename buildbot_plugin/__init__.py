"""Buildbot plugin of the firehose: publishes a master's events to a firehose server.

Use it from ``master.cfg`` as ``reporters.FirehoseReporter`` (a ``buildbot.reporters`` entry
point); see ``docs/plugin.md``.  Importing this package does not import Buildbot: only
:mod:`buildbot_plugin.reporter` needs it.
"""

__all__ = ["FirehoseReporter"]


def __getattr__(name: str):  # pragma: no cover - lazy so convert/outbox stay Buildbot-free
    if name == "FirehoseReporter":
        from buildbot_plugin.reporter import FirehoseReporter

        return FirehoseReporter
    raise AttributeError(name)
