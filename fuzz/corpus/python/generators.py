def g():
    yield from range(3)
list(g())
