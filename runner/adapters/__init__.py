"""The Ray Tune and MLflow adapters: the only modules that import Ray (all of them) or MLflow
(``tracking``, and ``callbacks`` through it).

``driver`` runs a sweep; ``trainable`` is the workers' side; ``nodes`` asks the cluster for
room, a shared storage and the dense baseline; ``callbacks`` turn Tune's events into MLflow
runs and a progress line; ``tracking`` is the MLflow side; ``submit`` sends a sweep through the
Jobs API; ``env`` holds the environment defaults they set; ``testing`` the test-only faults.
"""
