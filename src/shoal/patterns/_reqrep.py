"""Request/reply over DEALER (requester) or ROUTER (a node's requester, routed) and
ROUTER (replier), many requests in flight: the requester is
``shoal.patterns._requester`` (where the protocol is described), the replier and
``serve_replier`` are ``shoal.patterns._replier``. This module names them together.
"""

from shoal.patterns._replier import (
    Replier,
    ReplierStatistics,
    Request,
    check_reply_cache,
    open_replier,
    replier_options,
    serve_replier,
)
from shoal.patterns._requester import (
    Requester,
    RequesterStatistics,
    open_requester,
    requester_options,
)

__all__ = ["Replier", "ReplierStatistics", "Request", "Requester", "RequesterStatistics",
           "check_reply_cache", "open_replier", "open_requester", "replier_options",
           "requester_options", "serve_replier"]
