"""Configuration: flags, config file and environment, and the errors a user sees."""

from __future__ import annotations

import re

import pytest

from firehose.cli import _parser, config_from_args, main
from firehose.config import Config, ConfigError, load_config_file, parse_token, tokens_from_env


def config(argv: list[str], environ: dict[str, str] | None = None) -> Config:
    return config_from_args(_parser().parse_args(["serve", *argv]), environ or {})


def test_defaults_are_the_embedded_single_node_setup() -> None:
    """With no options: loopback port 8080, a local SQLite file, no masters."""
    c = config([])
    assert (c.listen, c.db, c.tokens) == ("tcp:8080:interface=127.0.0.1", "firehose.sqlite", {})


def test_flags_override_file_override_environment(tmp_path) -> None:
    """Tokens and settings merge: environment, then file, then flags."""
    path = tmp_path / "f.toml"
    path.write_text('db = "file.sqlite"\n[masters]\nm1 = "file"\nm2 = "file"\n[retention]\nmax_age_days = 2\n')
    c = config(["--config", str(path), "--master-token", "m2=flag", "--retention-events", "5"],
               {"FIREHOSE_MASTER_TOKENS": "m1=env,m3=env"})
    assert c.tokens == {"m1": "file", "m2": "flag", "m3": "env"}
    assert c.db == "file.sqlite"
    assert (c.retention.max_age, c.retention.max_events) == (2 * 86400, 5)


@pytest.mark.parametrize("text", ["m1", "=tok", "m1=", "bad name=tok"])
def test_bad_tokens_are_config_errors(text: str) -> None:
    """A token that is not NAME=TOKEN with a safe name is refused with a message."""
    with pytest.raises(ConfigError):
        parse_token(text)


def test_environment_tokens() -> None:
    """FIREHOSE_MASTER_TOKENS holds comma-separated NAME=TOKEN pairs."""
    assert tokens_from_env({"FIREHOSE_MASTER_TOKENS": "a=1, b=2,"}) == {"a": "1", "b": "2"}


def test_config_file_errors_name_the_file(tmp_path) -> None:
    """Unreadable, invalid or misspelt config files are errors naming the file and the key."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(str(tmp_path / "missing.toml"), Config())
    bad = tmp_path / "bad.toml"
    bad.write_text("listen = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config_file(str(bad), Config())
    typo = tmp_path / "typo.toml"
    typo.write_text('lisen = "tcp:1"\n')
    with pytest.raises(ConfigError, match="unknown keys"):
        load_config_file(str(typo), Config())


def test_bad_config_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """The command exits 2 with one clear line for a bad token."""
    assert main(["serve", "--master-token", "nonsense"]) == 2
    assert "NAME=TOKEN" in capsys.readouterr().err


def test_webhooks_table_is_read_into_the_config(tmp_path) -> None:
    """``[webhooks]`` settings and hooks reach ``config.webhooks``; a bad hook is a config error
    naming the file and the hook."""
    path = tmp_path / "f.toml"
    path.write_text('[webhooks]\nmax_failures = 3\nallow_networks = ["127.0.0.0/8"]\n'
                    '[webhooks.hooks.h1]\nurl = "http://127.0.0.2:9/x"\nsecret = "s"\n')
    c = load_config_file(str(path), Config())
    assert (c.webhooks.max_failures, c.webhooks.allow_networks) == (3, ["127.0.0.0/8"])
    assert c.webhooks.hooks["h1"]["url"] == "http://127.0.0.2:9/x"
    path.write_text('[webhooks.hooks.h2]\nurl = "ftp://example.com/"\nsecret = "s"\n')
    with pytest.raises(ConfigError, match=r"webhooks\.hooks\.h2") as info:
        load_config_file(str(path), Config())
    assert str(path) in str(info.value)


def test_two_masters_with_one_token_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """A token shared by two masters is a config error (exit 2), not a master refused forever."""
    assert main(["serve", "--master-token", "a=same", "--master-token", "b=same"]) == 2
    assert "same token" in capsys.readouterr().err
    from firehose.service import FirehoseServer

    with pytest.raises(ConfigError, match="same token"):
        FirehoseServer(Config(tokens={"a": "x", "b": "x"}))


def test_connection_limits_from_file_and_flags(tmp_path) -> None:
    """The four connection limits come from ``[limits]`` in the file and from flags (which
    win); without either they are the documented defaults."""
    c = config([])
    assert (c.max_connections, c.max_connections_per_address, c.request_timeout, c.idle_timeout) == (
        None, 256, 10.0, 60.0)
    path = tmp_path / "f.toml"
    path.write_text("[limits]\nmax_connections = 500\nmax_connections_per_address = 0\n"
                    "request_timeout = 2.5\nidle_timeout = 30\n")
    c = config(["--config", str(path), "--max-connections", "100", "--idle-timeout", "5"])
    assert (c.max_connections, c.max_connections_per_address, c.request_timeout, c.idle_timeout) == (
        100, 0, 2.5, 5.0)


@pytest.mark.parametrize(
    "text,says",
    [("max_connections = 0", "max_connections must be at least 1"),
     ("max_connections_per_address = -1", "at least 0"),
     ("request_timeout = 0", "more than 0"),
     ("idle_timeout = \"long\"", "must be a number"),
     ("max_connections = 1.5", "an integer"),
     ("max_conections = 5", "unknown keys")],
)
def test_bad_limits_in_the_file_name_the_key(tmp_path, text: str, says: str) -> None:
    """A limit that is no limit, of the wrong type or misspelt is a config error naming it."""
    path = tmp_path / "f.toml"
    path.write_text(f"[limits]\n{text}\n")
    with pytest.raises(ConfigError, match=says) as info:
        load_config_file(str(path), Config())
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "argv,says",
    [(["--max-connections", "0"], "--max-connections must be at least 1"),
     (["--max-connections-per-address", "-3"], "--max-connections-per-address"),
     (["--request-timeout", "0"], "--request-timeout must be more than 0"),
     (["--idle-timeout", "-1"], "--idle-timeout")],
)
def test_bad_limit_flags_exit_2(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad limit flag exits 2 with one line naming the flag."""
    assert main(["serve", *argv]) == 2
    assert says in capsys.readouterr().err


def test_limits_set_in_code_are_checked_too() -> None:
    """A ``Config`` built in code is checked like one read from a file."""
    from firehose.service import FirehoseServer

    with pytest.raises(ConfigError, match="max_connections_per_address"):
        FirehoseServer(Config(max_connections_per_address=-1))


def test_state_checkpoint_settings_from_file_and_flags(tmp_path) -> None:
    """``[state]`` in the file and ``--checkpoint-interval``/``--no-checkpoint`` (which win) set
    the checkpoint; by default it is ``<db>.state``, written every 300 s and at a clean stop,
    and none is kept for a ``:memory:`` journal."""
    from firehose.config import checkpoint_path

    c = config([])
    assert (c.checkpoint, c.checkpoint_interval, c.replay_before_listening) == (True, 300.0, 5000)
    assert checkpoint_path(c) == "firehose.sqlite.state"
    assert checkpoint_path(config(["--db", ":memory:"])) is None
    path = tmp_path / "f.toml"
    path.write_text('[state]\ncheckpoint_interval = 30\npath = "/var/lib/fh/state"\nreplay_before_listening = 0\n')
    c = config(["--config", str(path)])
    assert (c.checkpoint_interval, checkpoint_path(c), c.replay_before_listening) == (30.0, "/var/lib/fh/state", 0)
    c = config(["--config", str(path), "--checkpoint-interval", "0", "--no-checkpoint"])
    assert (c.checkpoint_interval, c.checkpoint, checkpoint_path(c)) == (0.0, False, None)
    path.write_text("[state]\ncheckpoint = false\n")
    assert checkpoint_path(config(["--config", str(path)])) is None


@pytest.mark.parametrize("text, says", [
    ("[state]\ncheckpoint_interval = -1\n", "checkpoint_interval must be a number of seconds"),
    ('[state]\ncheckpoint_interval = "5"\n', "checkpoint_interval must be a number of seconds"),
    ("[state]\nreplay_before_listening = 1.5\n", "replay_before_listening must be an integer"),
    ('[state]\ncheckpoint = "yes"\n', "checkpoint must be true or false"),
    ("[state]\npath = 3\n", "path must be a file name"),
    ("[state]\ninterval = 3\n", "unknown keys ['interval']"),
    ("state = 3\n", "[state] must be a table"),
])
def test_bad_state_settings_name_the_key(tmp_path, text: str, says: str) -> None:
    path = tmp_path / "f.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_config_file(str(path), Config())


def test_bad_checkpoint_interval_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--checkpoint-interval", "-5"]) == 2
    assert "--checkpoint-interval must be 0 or more" in capsys.readouterr().err
