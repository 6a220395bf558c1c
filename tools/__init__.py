"""Developer tools, not served: the tiny-checkpoint builder and the local Ray Serve launcher."""
