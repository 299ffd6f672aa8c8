"""A self-contained demo: a real Buildbot master and worker publishing to a firehose.

Run ``python -m buildbot_plugin.demo --firehose-url http://127.0.0.1:8080 --token demo-token
--basedir run/demo``.  See :mod:`buildbot_plugin.demo.__main__`.
"""
