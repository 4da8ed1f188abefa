"""Agents: typed tools, the built-in ones, the code sandbox, MCP, and the loop that runs them."""
