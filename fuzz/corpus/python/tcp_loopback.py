import socket
s = socket.socket()
s.settimeout(2)
s.connect(("127.0.0.1", {{PORT}}))
s.sendall(b"{{TOKEN}}")
