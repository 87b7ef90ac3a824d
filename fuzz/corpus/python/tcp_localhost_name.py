import socket
socket.create_connection(("localhost", {{PORT}}), timeout=2).sendall(b"{{TOKEN}}")
