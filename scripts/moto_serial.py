"""moto's server, answering one request at a time.

moto's TransactWriteItems is not isolated: it applies a transaction's writes one by one and,
when a condition fails, restores the whole table from a copy taken when the transaction
began. With the stock threaded server, a failing transaction can so undo another one that
committed meanwhile, or two can both pass their conditions (seen in our race tests as a
transaction whose writes stayed while its counter update vanished). DynamoDB transactions
are serializable; serving requests one at a time gives moto the same isolation.

Usage: python scripts/moto_serial.py -H 127.0.0.1 -p PORT
"""
import moto.server as server

_run_simple = server.run_simple


def _serial(*args, **kwargs):
    kwargs["threaded"] = False
    return _run_simple(*args, **kwargs)


server.run_simple = _serial

if __name__ == "__main__":
    server.main()
