"""The socket layer: the only code that touches raw ZeroMQ sockets.

``_base`` holds the theory of operation (how one FD, edge-triggered, serves many trio
tasks) and the socket's state and waits; ``_send`` and ``_receive`` add the operations,
``_socket`` puts them together as ``Socket``; ``_context`` is what every socket shares
(context, size limit, endpoint rules, error translation); ``_monitor`` reads libzmq's
socket monitor; ``_tasks`` holds the nursery shape background services run in.
"""
