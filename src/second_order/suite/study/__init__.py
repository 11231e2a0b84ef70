"""The study: tuned budgets, time to target and performance profiles over several workloads.

* :mod:`.targets` — steps and optimizer seconds until a run's validation metric reaches a target.
* :mod:`.profiles` — performance profiles (Dolan & Moré 2002) over workloads.
"""
