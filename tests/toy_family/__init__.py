"""A sixth family that lives only in the test tree: its descriptor and its module, registered by
import path from the session's config (`families:`), and served end to end like the others."""
