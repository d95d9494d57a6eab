"""The Open Responses server: ``app.create_app(config)`` builds it, ``cli.serve_command`` runs it.

Request data path: ``routes`` -> ``requests`` (validation) -> ``conversation`` -> ``runs`` (backend steps ->
``ResponseWriter`` -> ``store`` log -> followers) -> ``streaming`` (SSE). Needs the ``server`` extra.
"""
