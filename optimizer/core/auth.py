"""The one place the API-key header of vLLM's ``--api-key`` is written."""

from __future__ import annotations

from typing import Optional

__all__ = ["bearer"]


def bearer(api_key: Optional[str]) -> dict[str, str]:
    """The ``Authorization: Bearer`` header for ``api_key``; no header (``{}``) without one."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
