"""Fault injection with real processes: SIGKILL under load, a full disk, a master cut off."""
