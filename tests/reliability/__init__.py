"""The reliability suite: crashes, load, lock contention, bad input and disk faults.

Child processes come from a fork server (:mod:`tests.reliability.forkserver`) that has
imported the library once, so that a test can kill, block or starve dozens of writers within
seconds. ``conftest.py`` gathers the figures the tests report and prints them at the end.
"""
