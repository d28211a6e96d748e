"""The training side: LEAD's method, the GRPO loop, tasks, engines and backends (no Ray, no MLflow).

Importing it pins the CPU kernel level before torch computes anything (``trainers.runtime.kernels``)."""

from trainers.runtime import kernels as _kernels

_kernels.pin()
