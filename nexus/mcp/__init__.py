"""The MCP prompt server (`MCP_ENABLED`): prompt files, their templates, JSON-RPC, and `/mcp` over HTTP."""
