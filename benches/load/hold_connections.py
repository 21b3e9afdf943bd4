"""Opens N keep-alive connections to a server, sends one request on each,
reads each answer and keeps them all open until stdin closes - so the
server's RSS can be read with N connections held (benches/load/run.sh)."""
import socket
import sys

host, port, n, path, token = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n").encode()
held = []
for _ in range(n):
    s = socket.create_connection((host, port))
    s.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length"))
    while len(body) < length:
        body += s.recv(65536)
    if not head.startswith(b"HTTP/1.1 200"):
        sys.exit(f"unexpected answer: {head[:40]!r}")
    held.append(s)
print(f"holding {len(held)}", flush=True)
sys.stdin.read()
