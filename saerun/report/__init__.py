"""Reports computed from the registry: Markdown tables and PNG plots."""
