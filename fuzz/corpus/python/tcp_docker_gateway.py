import socket
for host in ("172.17.0.1", "172.18.0.1", "10.0.2.2", "192.168.65.2"):
    try:
        socket.create_connection((host, {{PORT}}), timeout=1).sendall(b"{{TOKEN}}")
    except OSError:
        pass
