"""gigarouter-serve: an OpenAI-compatible Ray Serve gateway for open vision models."""
