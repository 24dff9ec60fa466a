"""Errors of the policy agent."""

from __future__ import annotations

from vsmcp.node.errors import NodeError


class PolicyAgentError(NodeError):
    """A policy set, a request or the agent module is not usable."""


class BadPolicySet(PolicyAgentError):
    """The policy set does not decode, or its signature does not verify."""


class BadRequest(PolicyAgentError):
    """A request of a batch lacks a field or has one of the wrong type."""
