"""End-to-end tests: a real firehose server process, driven over loopback sockets."""
