#!/usr/bin/env python3
"""Write the seed corpora of the byte-level fuzz targets (fuzz/corpus/TARGET).

Seeds come from the worked example of docs/PROTOCOL.md section 9 (the output
of `cargo run -p hsmgate-wire --example transcript`, given on stdin), from the
example configs in config/ and the test fixtures, and from messages written
here by the layout of docs/PROTOCOL.md. The structure-aware targets
(outer_responder, inner_node) take no hand-written seeds: their corpora are
what a short run found, minimized (see README.md).

Usage (from the repository root):
    cargo run -q -p hsmgate-wire --example transcript | python3 fuzz/seeds/make_seeds.py
"""

import hashlib
import pathlib
import re
import struct
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPUS = ROOT / "fuzz" / "corpus"


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / ("seed-" + hashlib.sha1(data).hexdigest()[:16])).write_bytes(data)


def transcript(text):
    """Sections of the transcript: title -> [(comment, bytes)]."""
    sections, title, comment = {}, None, ""
    for line in text.splitlines():
        if line.startswith("### "):
            title = line[4:]
            sections[title] = []
            comment = ""
        elif title and line.strip().startswith("#"):
            comment = line.strip()
        elif title and re.fullmatch(r"\s+([0-9a-f]{2} ?)+", line):
            sections[title].append((comment, bytes.fromhex(line.replace(" ", ""))))
    out = {}
    for title, parts in sections.items():
        frame = b"".join(b for c, b in parts if "plaintext" not in c)
        plain = b"".join(b for c, b in parts if "plaintext" in c)
        out[title] = (frame, plain)
    return out


def name(s):
    return bytes([len(s)]) + s.encode()


def blob(b):
    return struct.pack(">H", len(b)) + b


def frames(ex):
    def find(word):
        for title, v in ex.items():
            if word in title:
                return v
        raise KeyError(word)

    hello, _ = find("Hello (")
    challenge, _ = find("Challenge (")
    creds, creds_plain = find("Credentials")
    decision, _ = find("Decision")
    ihello, _ = find("InnerHello")
    ichallenge, ichallenge_plain = find("InnerChallenge")
    ifinish, _ = find("InnerFinish")
    ping, ping_plain = find("ping request")
    pong, pong_plain = find("pong response")
    chello, _ = find("ControlHello")
    cchallenge, _ = find("ControlChallenge")
    cfinish, _ = find("ControlFinish")
    grantkey, grantkey_plain = find("GrantKey")
    grant, grant_plain = find("Grant (")
    error = bytes([0, 2, 5, 3])

    # frame: a phase selector byte (0 outer, 1 inner handshake, 2
    # gateway-node, 3 data), then frames as they follow each other.
    for sel, seq in [
        (0, [hello]), (0, [challenge]), (0, [creds, ihello]), (0, [decision]),
        (0, [error]), (1, [ihello]), (1, [ichallenge]), (1, [ifinish]),
        (3, [ping, pong]), (2, [chello]), (2, [cchallenge, cfinish]),
        (2, [grantkey]), (2, [grant, ihello]), (0, [hello[:20]]),
        (0, [bytes([4, 1]) + bytes([1])]),
    ]:
        write("frame", bytes([sel]) + b"".join(seq))

    # ops: the example's ping and pong, and one of each op and reply.
    write("ops_request", ping_plain)
    write("ops_reply", b"\x00" + pong_plain)
    rid = struct.pack(">I", 7)
    label = name("k1")
    for body in [
        b"\x02" + struct.pack(">H", 32),
        b"\x03\x02" + label,
        b"\x04",
        b"\x05" + label + blob(b"hello"),
        b"\x06" + label + blob(b"hello") + blob(bytes(64)),
        b"\x07" + label + blob(b"secret") + blob(b"aad"),
        b"\x08" + label + blob(bytes(40)) + blob(b""),
        b"\x09" + label + b"\x01" + blob(bytes(32)),
        b"\x0a" + label + b"\x01" + blob(bytes(256)),
        b"\x0b" + label,
        b"\x0c" + label + blob(b"\x01\x02"),
        b"\x0d" + label + blob(bytes(12)) + blob(b"pt") + blob(b""),
        b"\x0e" + label + blob(bytes(12)) + blob(bytes(18)) + blob(b"a"),
        b"\x0f" + name("cert") + blob(b"\x01") + blob(b"\x30\x00"),
        b"\x10", b"\x11" + name("cert"), b"\x12" + name("cert"), b"\x13",
        b"\x14" + label, b"\x7f",
    ]:
        write("ops_request", rid + body)
    key_v1 = b"\x01" + label + blob(bytes(32))
    key_v2 = b"\x02" + label + blob(b"\x04" + bytes(64)) + blob(b"\x01")
    obj = name("cert") + blob(b"\x01") + struct.pack(">H", 2)
    for version, body in [
        (1, b"\x00\x02" + blob(bytes(8))),
        (1, b"\x00\x03" + key_v1),
        (1, b"\x00\x04" + struct.pack(">H", 2) + key_v1 + key_v1),
        (1, b"\x00\x05" + blob(bytes(64))),
        (1, b"\x00\x06\x01"),
        (1, b"\x02"),
        (2, b"\x00\x04" + struct.pack(">H", 1) + key_v2),
        (2, b"\x00\x0f" + obj),
        (2, b"\x00\x10" + struct.pack(">H", 1) + obj),
        (2, b"\x00\x11" + obj + blob(b"\x30\x00")),
        (2, b"\x00\x13" + struct.pack(">H", 1) + b"\x05" + label + blob(b"")),
        (2, b"\x00\x14" + key_v2),
        (2, b"\x06"),
    ]:
        write("ops_reply", bytes([version - 1]) + rid + body)

    # grant: a selector byte, then the grant's plaintext or a frame body.
    write("grant", b"\x00" + grant_plain)
    write("grant", b"\x01" + grant_plain)
    write("grant", b"\x00" + grant[3:])
    v6 = bytearray(grant_plain)
    # The same grant from an IPv6 source (family 6, 16 address bytes).
    v6 = v6[:25] + b"\x06" + bytes(15) + b"\x01" + v6[30:]
    write("grant", b"\x02" + bytes(v6))

    # control: selector 0 messages, 1 a handshake (hello body, finish body),
    # 2 a ControlData body.
    write("control", b"\x00" + grantkey_plain)
    write("control", b"\x00\x02\x01" + struct.pack(">II", 3, 100))
    write("control", b"\x00\x03" + struct.pack(">Q", 42))
    write("control", b"\x00\x04" + struct.pack(">Q", 42))
    write("control", bytes([1 + 3 * 38]) + chello[3:] + cfinish[3:])
    write("control", b"\x02" + grantkey[3:])

    return hello, creds


def proxies():
    for line in [
        " TCP4 192.0.2.1 198.51.100.2 40000 2300\r\n",
        " TCP6 2001:db8::1 2001:db8::2 40000 2300\r\n",
        " TCP6 ::ffff:192.0.2.1 ::1 1 65535\r\n",
        " UNKNOWN\r\n",
        " UNKNOWN ffff::1 ::1 1 2\r\n",
        " TCP4 192.0.2.1 198.51.100.2 40000 2300\r\nHSMG",
        " TCP4 192.0.2.01 198.51.100.2 40000 2300\r\n",
        " TCP4 192.0.2.1 198.51.100.2 040000 2300\r\n",
    ]:
        write("proxy_v1", line)
    v4 = bytes([192, 0, 2, 1, 198, 51, 100, 2]) + struct.pack(">HH", 40000, 2300)
    v6 = bytes.fromhex("20010db8000000000000000000000001" * 2) + struct.pack(">HH", 1, 2)
    tlv = b"\x04" + struct.pack(">H", 4) + b"vpce"
    for body in [
        b"\x21\x11" + struct.pack(">H", len(v4)) + v4,
        b"\x21\x21" + struct.pack(">H", len(v6)) + v6,
        b"\x21\x11" + struct.pack(">H", len(v4 + tlv)) + v4 + tlv,
        b"\x20\x00\x00\x00",
        b"\x20\x11" + struct.pack(">H", len(v4)) + v4,
        b"\x21\x00\x00\x00HSMG",
        b"\x21\x12" + struct.pack(">H", len(v4)) + v4,
        b"\x21\x31" + struct.pack(">H", 216) + bytes(216),
    ]:
        write("proxy_v2", body)


def configs():
    for target, files in [
        ("config_gateway", ["config/gateway.toml"]),
        ("config_directory", ["config/directory.toml", "directory/tests/fixtures/*.toml"]),
        ("config_node", ["config/hsm.toml", "hsm-node/tests/fixtures/*.toml"]),
        ("config_client", ["config/client.toml", "client/tests/fixtures/*.toml"]),
    ]:
        for pattern in files:
            for path in sorted(ROOT.glob(pattern)):
                text = path.read_text()
                if target == "config_client":
                    # The fuzz target's fixture key files.
                    text = text.replace("service.key", "client.key")
                write(target, text)
    gw = (ROOT / "config/gateway.toml").read_text()
    minimal = (
        'gateway_id = "gw-1"\nkey_file = "gateway.key"\n'
        '[[listeners]]\naddress = "127.0.0.1:2300"\n'
        '[directory]\nendpoint = "http://127.0.0.1:7100"\n'
        '[[pools]]\nname = "default"\nmembers = ["127.0.0.1:7000"]\n'
    )
    write("config_gateway", minimal)
    write("config_gateway", gw.replace("2300", "99999"))
    write("config_gateway", gw + "\n[unknown]\n")


def config_dicts():
    """fuzz/dict/config_*.dict: the table headers and keys of each file kind."""
    for target, files in [
        ("config_gateway", ["config/gateway.toml"]),
        ("config_directory", ["config/directory.toml", "directory/tests/fixtures/*.toml"]),
        ("config_node", ["config/hsm.toml", "config/pkcs11.toml", "hsm-node/tests/fixtures/*.toml"]),
        ("config_client", ["config/client.toml", "client/tests/fixtures/*.toml"]),
    ]:
        words = set()
        for pattern in files:
            for path in ROOT.glob(pattern):
                for line in path.read_text().splitlines():
                    line = line.lstrip("# ").strip()
                    m = re.fullmatch(r"(\[\[?[a-z_.]+\]\]?)", line)
                    if m:
                        words.add(m.group(1))
                    m = re.match(r"([a-z_]+) = ", line)
                    if m:
                        words.add(m.group(1) + " = ")
        words |= {'"', "[", "]", "true", "false", "\n", "127.0.0.1:", "[::1]:",
                  "x25519:", "0.0.0.0/0"}
        lines = ["# Table headers and keys of the %s files (generated by make_seeds.py)." % target[7:]]
        for i, w in enumerate(sorted(words)):
            esc = w.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\x0a")
            lines.append('w%d="%s"' % (i, esc))
        (ROOT / "fuzz" / "dict" / (target + ".dict")).write_text("\n".join(lines) + "\n")


def keyfiles():
    pub = "x25519:" + "11" * 32
    write("keyfile", pub)
    write("keyfile", "# hsmgate static key pair (X25519). Keep this file secret.\n"
          'public = "x25519:603fe5551330bf6d2c174a2736fa2996bf8311a259b38a9ed749425a83562909"\n'
          'private = "x25519-private:' + "47" * 32 + '"\n')
    write("keyfile", 'private = "x25519-private:' + "AB" * 32 + '"\n')
    write("keyfile", 'public = "' + pub + '"\nsealed = "argon2id-aes256gcm:m=65536,t=3,p=1:'
          + "00" * 16 + ":" + "11" * 12 + ":" + "22" * 48 + '"\n')
    write("keyfile", 'public = "' + pub + '"\nsealed = "argon2id-aes256gcm:m=8,t=1,p=1:x:y:z"\n')


def ders():
    point = b"\x04" + bytes(range(64))
    write("der", b"\x00\x04" + bytes([len(point)]) + point)
    write("der", b"\x01\x04\x81\x61" + b"\x04" + bytes(96))
    n = b"\x00\xc5" + bytes(255)
    e = b"\x01\x00\x01"
    body = b"\x02\x82" + struct.pack(">H", len(n)) + n + b"\x02\x03" + e
    write("der", b"\x00\x30\x82" + struct.pack(">H", len(body)) + body)
    write("der", b"\x00\x30\x09\x02\x02\x00\xc5\x02\x03\x01\x00\x01")
    sha256 = bytes.fromhex("3031300d060960864801650304020105000420")
    write("der", b"\x00" + sha256 + bytes(32))
    sha1 = bytes.fromhex("3021300906052b0e03021a05000414")
    write("der", b"\x00" + sha1 + bytes(20))
    write("der", b"\xf0\x04\x02\xab\xcd")


def answers():
    def field(tag, wire_type, value):
        key = bytes([tag << 3 | wire_type])
        if wire_type == 0:
            out = b""
            while True:
                b = value & 0x7F
                value >>= 7
                out += bytes([b | (0x80 if value else 0)])
                if not value:
                    return key + out
        return key + bytes([len(value)]) + value

    allow = (field(1, 0, 1) + field(2, 0, 1) + field(3, 2, b"default")
             + field(4, 2, b"10.0.0.0/8") + field(4, 2, b"::1/128")
             + field(5, 0, 4) + field(6, 0, 30))
    write("directory_answer", allow)
    write("directory_answer", allow + bytes([10, 0, 0, 7] * 4))
    write("directory_answer", field(1, 0, 2) + field(2, 0, 6) + field(3, 2, b"p")
          + field(4, 2, b"192.0.2.0/24") + field(6, 0, 30))
    write("directory_answer", field(1, 0, 2) + field(2, 0, 2) + field(6, 0, 5))
    write("directory_answer", field(1, 0, 1) + field(3, 2, b"default")
          + field(4, 2, b" 0.0.0.0/0 ") + field(4, 2, b"::ffff:0:0/96"))


def main():
    ex = transcript(sys.stdin.read())
    frames(ex)
    proxies()
    configs()
    config_dicts()
    keyfiles()
    ders()
    answers()


if __name__ == "__main__":
    main()
