class A:
    def __init__(self, v):
        self.v = v
    def __repr__(self):
        return f'A({self.v!r})'
print(A(1))
