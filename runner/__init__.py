"""dcsweep.runner: Deep Compression cycles and sweeps, in three rooms and a command line.

- ``cycle``: one train–prune–share–encode cycle (``run_cycle``), its settings, models, data
  sets, training, result schema, Pareto maths and plots; no Ray, no MLflow.
- ``sweep``: what a sweep is, checked before Ray starts: the space as run, its name, storage
  and tracking store; no Ray, no MLflow.
- ``adapters``: Ray Tune and MLflow: the driver, the trainable, callbacks, tracking, submit.
- ``cli``: the ``dcsweep`` command on top of the three.
"""
