"""Model deployments: one module per model family on a small shared base."""
