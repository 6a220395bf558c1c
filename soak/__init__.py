"""The bounded soak run (`make soak`): see soak/run.py."""
