# A minimal SIP registrar for the example and its test: answers a REGISTER
# with 200 OK when its Contact host:port is the datagram's source (what a
# NAT without an ALG breaks), else 400 with what it saw.
import re, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("listening", flush=True)
while True:
    data, src = s.recvfrom(65535)
    text = data.decode(errors="replace")
    m = re.search(r"^Contact: <sip:[^@]+@([0-9.]+):([0-9]+)>", text, re.M)
    ok = m is not None and (m.group(1), int(m.group(2))) == src
    status = "SIP/2.0 200 OK" if ok else "SIP/2.0 400 Contact %s:%s is not the source %s:%d" % (
        m.group(1) if m else "-", m.group(2) if m else "-", src[0], src[1])
    s.sendto((status + "\r\n\r\n").encode(), src)
