"""dcsweep.runner: models, data sets, the train–prune–share cycle, the Ray Tune driver, MLflow
tracking and the ``dcsweep`` CLI. Arrives with the cycle and sweep issues."""
