"""The training runtime that runs inside training pods (`python -m modelops.trainer`); torch is imported lazily."""


class TrainerError(Exception):
    """Bad input or environment: the trainer exits non-zero with this one-line reason."""
