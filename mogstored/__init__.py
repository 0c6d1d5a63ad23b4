"""MogileFS storage node: HTTP file server and sidechannel on one epoll core."""

__version__ = "0.1.0"
