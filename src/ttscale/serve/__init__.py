"""`ttscale serve`: an OpenAI-compatible server that answers with test-time compute."""
from __future__ import annotations

from ttscale.serve.app import ServeConfig, create_app
from ttscale.serve.limits import Limits

__all__ = ["Limits", "ServeConfig", "create_app"]
