"""The socket layer: the only code that touches raw ZeroMQ sockets.

``_socket`` drives a pyzmq socket from trio (see its theory of operation); ``_tasks``
holds the nursery shape shoal's background services run in.
"""
