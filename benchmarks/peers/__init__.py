"""The servers a user would run instead of the gateway, each started as its own process."""
