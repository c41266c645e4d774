"""Thin I/O adapters shared by the super peer and the node: UDP, framed TCP, interfaces."""
