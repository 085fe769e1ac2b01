"""A stand-in for the kubelet's container runtime in end-to-end tests: runs kwok pods as local processes."""

from .kubelet import EXIT_CODE, READY, TERMINATION_MESSAGE, ProcessKubelet

__all__ = ["EXIT_CODE", "READY", "TERMINATION_MESSAGE", "ProcessKubelet"]
