"""A pod's tiny TCP server for scripts/demo.sh: answers every connection with the pod's
name and the client's address, then closes. Usage: serve.py NAME PORT"""
import socket
import sys

name, port = sys.argv[1], int(sys.argv[2])
server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", port))
server.listen(128)
while True:
    conn, peer = server.accept()
    try:
        conn.sendall(f"{name} {peer[0]}\n".encode())
    except OSError:
        pass
    conn.close()
