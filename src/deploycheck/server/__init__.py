"""The REST server: exported artifacts over HTTP, with seed endpoints and the Open Inference Protocol v2.

`app.create_app` builds the ASGI app, `launcher.serve` runs it on uvicorn; `repository` finds and loads what is
served, `protocol` decodes requests, `batcher` merges them."""
