"""Python client SDK and the ``nudge`` command line."""

from nudge.clients.client import Client, make_event, make_transaction

__all__ = ["Client", "make_event", "make_transaction"]
