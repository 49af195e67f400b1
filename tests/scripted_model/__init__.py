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
    throttled,
    tool_result_text,
    tool_use,
    unified_headers,
    usage_limit,
    write,
)

__all__ = ["ScriptedModel", "bash", "cut", "edit", "error", "hang", "is_main_request", "last_tool_results",
           "last_user_text", "text", "throttled", "tool_result_text", "tool_use", "unified_headers", "usage_limit",
           "write"]
