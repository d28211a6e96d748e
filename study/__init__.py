"""A study: a spec turned into Ray Tune experiments, tracked in MLflow.

Importing it imports ``trainers`` first, which pins the CPU kernel level before torch loads."""

import trainers  # noqa: F401
