"""The server's routes, one router per area; `genforge.serve.app.create_app` includes them all.

A route reads what it shares with the others from `request.app.state` (set by `create_app`):
`registry` (models), `images` (the image models), `speech` (the speech models) and `speaking` (the
semaphore of speech streams), `metrics`, `forwarder` (upstream servers), `documents` (the document
stores, or None) and `config` (the `ServeConfig`). A router can so be mounted alone on a bare
FastAPI app with just the state it reads.
"""
