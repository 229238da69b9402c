"""flock's CNI plugin: a thin executable (``plugin``) and the agent-side work (``server``)."""
