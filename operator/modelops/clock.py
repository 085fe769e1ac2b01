"""Timestamps as Kubernetes writes them: RFC 3339 in UTC, second precision."""

from __future__ import annotations

from datetime import datetime, timezone

FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def rfc3339(moment: datetime | None = None) -> str:
    """`moment` (default: now) as e.g. 2026-01-01T12:00:00Z."""
    return (moment or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime(FORMAT)


def parse_rfc3339(stamp: str) -> datetime:
    return datetime.strptime(stamp, FORMAT).replace(tzinfo=timezone.utc)
