"""The stream inspector: a web page that shows a Responses stream event by event, the response it builds and
what the conformance checker finds wrong with it.

``routes.mount()`` is what ``headwater serve`` serves at ``/inspect``; ``app.create_inspector_app`` is the
recordings-only app of ``headwater inspect``. The analysis (``analysis``) is the protocol core's own; the page
(``static/``, plain ES modules, no build step) only draws what the server sends.
"""
