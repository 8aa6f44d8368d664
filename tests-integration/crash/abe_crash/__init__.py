"""A crash test of abe on real brokers: workers killed with SIGKILL, a broker restarted.

One idea per module: ``records`` (the files the processes write), ``producer`` and
``worker`` (the processes, run as ``python -m abe_crash.<name>``), ``sizes`` (how big a
run is), ``run`` (the conductor: starts, kills, restarts, drains) and ``verdict`` (lost,
duplicates and why, stalls, time to resume). ``cleanup`` deletes what a run left on a
shared broker.
"""
