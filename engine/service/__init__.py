"""The gRPC layer: protocol concerns only (wire mapping, status codes, health, shutdown).

It calls the engine; the engine never imports it. Generated stubs live in
`engine.service.pb` (see scripts/gen_proto.py).
"""
