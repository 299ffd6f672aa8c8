"""Packaging for firehose: the server (``firehose``) and the Buildbot plugin (``buildbot_plugin``)."""

from setuptools import find_packages, setup

setup(
    name="buildbot-firehose",
    version="0.1.0",
    description="A live, resumable event firehose for Buildbot masters",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["firehose", "firehose.*", "buildbot_plugin", "buildbot_plugin.*"]),
    package_data={"firehose": ["static/*", "py.typed"]},
    install_requires=[
        # Capped: firehose.transports.write_now reads internals of twisted.internet.tcp (named in
        # its docstring); tests/unit/test_fast_path.py passed on Twisted 26.10.  Raise the cap
        # once that test passes on the newer Twisted.
        "twisted>=24.7,<27",
        "autobahn>=24.4",
        "orjson>=3.9",
        "fastjsonschema>=2.19",
        "prometheus-client>=0.20",
        # The shared journal of several nodes (firehose serve --redis); imported only then.
        "redis[hiredis]>=5",
    ],
    extras_require={
        # The plugin runs inside a Buildbot master; the server never needs Buildbot.
        "plugin": ["buildbot>=4.0"],
        # The benchmarks' plots and profiles (python -m bench); `python -m bench buildbot` puts
        # these, with buildbot-www, into bench/.venv-www so the project venv never needs them.
        "bench": ["matplotlib>=3.8", "py-spy>=0.3.14"],
        "test": [
            "pytest>=8",
            # The unit tests drive the site in memory with treq's StubTreq; nothing installed
            # uses treq (the plugin posts with its own sender: buildbot_plugin/sender.py).
            "treq>=24.9",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "websockets>=13",
            "playwright>=1.48",
            "buildbot==4.3.0",
            "buildbot-worker==4.3.0",
            "ruff",
            "mypy",
            "mypy-zope",
            # The specs (issue #11): validators of /openapi.json and the JSON Schemas, and
            # schemathesis against a running server.
            "openapi-spec-validator>=0.7",
            "jsonschema>=4.18",
            "schemathesis>=4,<5",
            # CloudEvents (issue #11): the SDK parses and validates what format=cloudevents
            # emits; the tests use its 2.x core API (cloudevents.core).
            "cloudevents>=2.2,<3",
            # Standard Webhooks (issue #11): a receiver built with the reference library
            # verifies our deliveries unmodified.
            "standardwebhooks>=1.0,<2",
        ],
    },
    entry_points={
        "console_scripts": ["firehose = firehose.cli:main"],
        "buildbot.reporters": ["FirehoseReporter = buildbot_plugin.reporter:FirehoseReporter"],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Software Development :: Build Tools",
    ],
)
