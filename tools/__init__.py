"""LLM tools over the shared runtime (ARCHITECTURE.md "LLM tools").

- ``context_tools``: ``BillingTools`` (the behaviour) and ``BillingToolkit`` (LangChain tools
  ``get_stripe_context`` and ``evaluate_routing_rules``); ``content``: what the model reads;
  ``descriptions``: what the model is told about the tools.
- ``bridge``: sync calls and calls from other loops run on the runtime's own event loop.
- ``drafter``: the reply drafter; ``scripted_model``: a provider-free tool-calling model.
- ``mcp_server``: the same tools over MCP (stdio).

Nothing is imported here, so ``import tools.descriptions`` does not load LangChain or the MCP SDK.
"""
