"""moto's server, answering one request at a time.

moto's TransactWriteItems is not isolated: it applies a transaction's writes one by one and,
when a condition fails, restores the whole table from a copy taken when the transaction
began. With the stock threaded server, a failing transaction can so undo another one that
committed meanwhile, or two can both pass their conditions (seen in our race tests as a
transaction whose writes stayed while its counter update vanished). DynamoDB transactions
are serializable; serving requests one at a time gives moto the same isolation.

It also answers GET /_audio_dedup/posted: what moto's API Gateway management API recorded
of PostToConnection (each connection's posted bytes, concatenated), which moto itself serves
no call to read back.

Usage: python scripts/moto_serial.py -H 127.0.0.1 -p PORT
"""
import json

import moto.server as server

_run_simple = server.run_simple


def _posted():
    from moto.apigatewaymanagementapi.models import apigatewaymanagementapi_backends

    out = {}
    for regions in apigatewaymanagementapi_backends.values():
        for backend in regions.values():
            for connection_id, connection in backend.connections.items():
                out[connection_id] = connection.data.decode("utf-8", "replace")
    return json.dumps(out).encode()


def _with_test_routes(app):
    def wrapped(environ, start_response):
        if environ.get("PATH_INFO") == "/_audio_dedup/posted":
            body = _posted()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return app(environ, start_response)

    return wrapped


def _serial(hostname, port, app, *args, **kwargs):
    kwargs["threaded"] = False
    return _run_simple(hostname, port, _with_test_routes(app), *args, **kwargs)


server.run_simple = _serial

if __name__ == "__main__":
    server.main()
