"""Scripted Anthropic Messages API server + the pinned Claude Code CLI (package.json) for tests."""

from .server import (
    ScriptedModel,
    bash,
    cut,
    edit,
    error,
    hang,
    is_main_request,
    last_tool_results,
    last_user_text,
    text,
    tool_result_text,
    tool_use,
    write,
)

__all__ = ["ScriptedModel", "bash", "cut", "edit", "error", "hang", "is_main_request", "last_tool_results",
           "last_user_text", "text", "tool_result_text", "tool_use", "write"]
