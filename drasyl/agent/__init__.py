"""The drasyl agent: a TUN overlay on the node core, configured by ``config.toml``."""
