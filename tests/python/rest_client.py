#!/usr/bin/env python3
"""An independent client of hsmgate-rest: Python `requests` for HTTPS, PyJWT
for the tokens, `cryptography` for the keys and to check what the service
returns (tests/tests/rest.rs runs it).

    rest_client.py keys DIR
        Make the token signing keys (ES256, EdDSA, RS256, and one ES256 key
        that the service does not know) and write DIR/jwks.json (public
        halves only) and DIR/<name>.pem (private halves).
    rest_client.py mint DIR ALG [CLAIMS_JSON [KEY]]
        Print one token: the demo claims, overridden by CLAIMS_JSON, signed
        with KEY (default: the ALG key of the set; `stranger`: a key the
        service does not know, under the ALG key's kid).
    rest_client.py jwk DIR NAME KID
        Print the public JWK of the P-256 key NAME (e.g. `stranger`) as KID.
    rest_client.py run URL CA_FILE DIR
        The API and every refusal against the service at URL; prints a JSON
        report and exits non-zero on the first failed check.

Every request has a timeout; nothing is sent anywhere but URL.
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import time

ISSUER = "https://issuer.test"
AUDIENCE = "hsmgate-rest"
TIMEOUT = 10


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# ----------------------------------------------------------------- keys


def make_keys(directory):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    keys = {
        "es1": ec.generate_private_key(ec.SECP256R1()),
        "ed1": ed25519.Ed25519PrivateKey.generate(),
        "rs1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "stranger": ec.generate_private_key(ec.SECP256R1()),
    }
    jwks = []
    for kid, key in keys.items():
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with open(os.path.join(directory, "jwt-" + kid + ".pem"), "wb") as f:
            f.write(pem)
        public = key.public_key()
        if kid == "stranger":
            continue
        if kid == "es1":
            n = public.public_numbers()
            jwk = {"kty": "EC", "crv": "P-256", "x": b64(n.x.to_bytes(32, "big")),
                   "y": b64(n.y.to_bytes(32, "big"))}
        elif kid == "ed1":
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}
        else:
            n = public.public_numbers()
            jwk = {"kty": "RSA", "n": b64(n.n.to_bytes(256, "big")), "e": b64(n.e.to_bytes(3, "big"))}
        jwk.update({"kid": kid, "use": "sig"})
        jwks.append(jwk)
    with open(os.path.join(directory, "jwks.json"), "w") as f:
        json.dump({"keys": jwks}, f)
    # The RS256 public key as PEM: the "HS256 signed with the public key"
    # attack uses exactly these bytes as the HMAC secret.
    with open(os.path.join(directory, "jwt-rs1.pub.pem"), "wb") as f:
        f.write(keys["rs1"].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def claims(**override):
    now = int(time.time())
    c = {"iss": ISSUER, "aud": AUDIENCE, "sub": "python-suite", "iat": now,
         "nbf": now - 5, "exp": now + 300, "tenant": "demo", "partitions": ["demo"]}
    c.update(override)
    return {k: v for k, v in c.items() if v is not None}


def mint(directory, alg, kid=None, **override):
    """kid: a key name (its own kid; `stranger` under the ALG key's kid),
    or `NAME:KID` for key NAME under the header kid KID."""
    import jwt
    names = {"ES256": "es1", "EdDSA": "ed1", "RS256": "rs1"}
    name = kid or names[alg]
    header_kid = names[alg] if name == "stranger" else name
    if ":" in name:
        name, header_kid = name.split(":", 1)
    with open(os.path.join(directory, "jwt-" + name + ".pem"), "rb") as f:
        key = f.read()
    headers = {"kid": header_kid}
    return jwt.encode(claims(**override), key, algorithm=alg, headers=headers)


def unsigned(header, body, signature=b""):
    return "%s.%s.%s" % (b64(json.dumps(header).encode()), b64(json.dumps(body).encode()),
                         b64(signature))


def hs256_with_public_key(directory):
    with open(os.path.join(directory, "jwt-rs1.pub.pem"), "rb") as f:
        secret = f.read()
    head = b64(json.dumps({"alg": "HS256", "kid": "rs1", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims()).encode())
    mac = hmac.new(secret, ("%s.%s" % (head, body)).encode(), hashlib.sha256).digest()
    return "%s.%s.%s" % (head, body, b64(mac))


def self_signed(directory):
    """A throwaway self-signed X.509 certificate, DER."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID
    with open(os.path.join(directory, "jwt-es1.pem"), "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "py-p256")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


# ----------------------------------------------------------------- checks


class Suite:
    def __init__(self, url, ca, directory):
        import requests
        self.http = requests.Session()
        self.ca = ca
        self.url = url.rstrip("/")
        self.dir = directory
        self.checks = 0
        self.token = mint(directory, "ES256")

    def call(self, method, path, body=None, token="default", raw=None, headers=None):
        h = dict(headers or {})
        if token == "default":
            token = self.token
        if token is not None:
            h["Authorization"] = "Bearer " + token
        kwargs = {"headers": h, "timeout": TIMEOUT, "verify": self.ca}
        if raw is not None:
            kwargs["data"] = raw
        elif body is not None:
            kwargs["json"] = body
        return self.http.request(method, self.url + path, **kwargs)

    def expect(self, response, status, problem=None, what=""):
        self.checks += 1
        detail = "%s %s: %s" % (what, response.status_code, response.text[:300])
        assert response.status_code == status, "want %d: %s" % (status, detail)
        if problem is not None:
            assert response.headers.get("Content-Type") == "application/problem+json", detail
            body = response.json()
            assert body["type"] == "urn:hsmgate:problem:" + problem, "want %s: %s" % (problem, detail)
            assert body["status"] == status, detail
        return response.json() if response.content else None

    def keys(self, p="demo"):
        return "/v1/partitions/%s/keys" % p

    # -------------------------------------------------------- the API

    def api(self):
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, padding
        from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

        data = b"signed by hsmgate-rest through the gateway"
        for kind in ["p256", "ed25519", "rsa2048", "p384"]:
            label = "py-" + kind
            made = self.expect(self.call("POST", self.keys(), {"label": label, "type": kind, "id": b64(b"\x01\x02")}), 201, what="generate " + kind)
            assert made["label"] == label and made["type"] == kind and made["id"] == "AQI", made
            got = self.expect(self.call("GET", self.keys() + "/" + label), 200)
            assert got["public_key"] == made["public_key"], got
            public = serialization.load_pem_public_key(got["public_key"]["pem"].encode())
            sig = unb64(self.expect(self.call("POST", self.keys() + "/%s/sign" % label, {"data": b64(data)}), 200)["signature"])
            if kind == "p256":
                assert got["public_key"]["jwk"]["crv"] == "P-256"
                der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
                public.verify(der, data, ec.ECDSA(hashes.SHA256()))
            elif kind == "p384":
                der = encode_dss_signature(int.from_bytes(sig[:48], "big"), int.from_bytes(sig[48:], "big"))
                public.verify(der, data, ec.ECDSA(hashes.SHA384()))
            elif kind == "ed25519":
                assert got["public_key"]["jwk"]["kty"] == "OKP"
                public.verify(sig, data)
            else:
                public.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
                # The JWK's modulus is the PEM's.
                assert int.from_bytes(unb64(got["public_key"]["jwk"]["n"]), "big") == public.public_numbers().n
            self.checks += 1
            ok = self.expect(self.call("POST", self.keys() + "/%s/verify" % label, {"data": b64(data), "signature": b64(sig)}), 200)
            bad = self.expect(self.call("POST", self.keys() + "/%s/verify" % label, {"data": b64(data + b"!"), "signature": b64(sig)}), 200)
            assert ok == {"valid": True} and bad == {"valid": False}, (ok, bad)

        # A digest signed with ECDSA and with RSA-PSS.
        digest = hashlib.sha256(data).digest()
        sig = unb64(self.expect(self.call("POST", self.keys() + "/py-p256/sign", {"digest": b64(digest), "scheme": "ecdsa"}), 200)["signature"])
        public = serialization.load_pem_public_key(self.call("GET", self.keys() + "/py-p256").json()["public_key"]["pem"].encode())
        from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
        public.verify(encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        rsa_public = serialization.load_pem_public_key(self.call("GET", self.keys() + "/py-rsa2048").json()["public_key"]["pem"].encode())
        sig = unb64(self.expect(self.call("POST", self.keys() + "/py-rsa2048/sign", {"digest": b64(digest), "scheme": "rsa-pss-sha256"}), 200)["signature"])
        rsa_public.verify(sig, digest, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), Prehashed(hashes.SHA256()))

        # RSA-OAEP: encrypted here, decrypted by the HSM.
        secret = b"wrapped for the HSM"
        ct = rsa_public.encrypt(secret, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
        pt = self.expect(self.call("POST", self.keys() + "/py-rsa2048/decrypt", {"ciphertext": b64(ct), "oaep_hash": "sha256"}), 200)
        assert unb64(pt["plaintext"]) == secret, pt

        # AES-256-GCM, both forms; a changed aad fails with 422.
        aes = self.expect(self.call("POST", self.keys(), {"label": "py-aes", "type": "aes256"}), 201)
        assert aes["public_key"] is None, aes
        ct = self.expect(self.call("POST", self.keys() + "/py-aes/encrypt", {"plaintext": b64(secret), "aad": b64(b"ctx")}), 200)["ciphertext"]
        assert len(unb64(ct)) == len(secret) + 28
        pt = self.expect(self.call("POST", self.keys() + "/py-aes/decrypt", {"ciphertext": ct, "aad": b64(b"ctx")}), 200)
        assert unb64(pt["plaintext"]) == secret
        self.expect(self.call("POST", self.keys() + "/py-aes/decrypt", {"ciphertext": ct, "aad": b64(b"other")}), 422, "decryption-failed")
        iv = b64(bytes(range(12)))
        ct = self.expect(self.call("POST", self.keys() + "/py-aes/encrypt", {"plaintext": b64(secret), "iv": iv}), 200)["ciphertext"]
        pt = self.expect(self.call("POST", self.keys() + "/py-aes/decrypt", {"ciphertext": ct, "iv": iv}), 200)
        assert unb64(pt["plaintext"]) == secret

        r = self.expect(self.call("POST", "/v1/partitions/demo/random", {"length": 48}), 200)
        assert len(unb64(r["data"])) == 48

        listed = self.expect(self.call("GET", self.keys()), 200)["keys"]
        labels = {k["label"] for k in listed}
        assert {"py-p256", "py-ed25519", "py-rsa2048", "py-aes"} <= labels, labels

        # Other tokens: EdDSA and RS256 signers are as good as ES256.
        for alg in ["EdDSA", "RS256"]:
            self.expect(self.call("GET", self.keys(), token=mint(self.dir, alg)), 200, what=alg)

        # A key's id, and a certificate stored beside the key.
        ided = self.expect(self.call("PATCH", self.keys() + "/py-p256", {"id": b64(b"\x0a\x0b")}), 200)
        assert ided["id"] == "Cgs" and ided["label"] == "py-p256", ided
        cert = self_signed(self.dir)
        certs = "/v1/partitions/demo/certificates"
        stored = self.expect(self.call("POST", certs, {"label": "py-p256", "id": "Cgs", "der": b64(cert)}), 201)
        assert stored == {"label": "py-p256", "id": "Cgs", "size": len(cert)}, stored
        got = self.expect(self.call("GET", certs + "/py-p256"), 200)
        assert unb64(got["der"]) == cert, got
        from cryptography import x509
        assert x509.load_pem_x509_certificate(got["pem"].encode()).public_bytes(serialization.Encoding.DER) == cert
        listed = self.expect(self.call("GET", certs), 200)["certificates"]
        assert any(c["label"] == "py-p256" for c in listed), listed
        self.expect(self.call("POST", certs, {"label": "py-p256", "der": b64(cert)}), 409, "label-in-use")
        self.expect(self.call("DELETE", certs + "/py-p256"), 204)
        self.expect(self.call("GET", certs + "/py-p256"), 404, "certificate-not-found")

        # Key lifecycle errors.
        self.expect(self.call("POST", self.keys(), {"label": "py-p256", "type": "p256"}), 409, "label-in-use")
        self.expect(self.call("DELETE", self.keys() + "/py-ed25519"), 204)
        self.expect(self.call("GET", self.keys() + "/py-ed25519"), 404, "key-not-found")
        self.expect(self.call("POST", self.keys() + "/nope/sign", {"data": "AA"}), 404, "key-not-found")
        self.expect(self.call("POST", self.keys() + "/py-aes/sign", {"data": "AA"}), 400, "invalid-argument")

    # ---------------------------------------------------- the refusals

    def refusals(self):
        # Each refused request would create this key if it got through.
        probe = {"label": "must-not-exist", "type": "p256"}
        import jwt as pyjwt
        with open(os.path.join(self.dir, "jwt-es1.pem"), "rb") as f:
            es1 = f.read()
        cases = [
            ("no token", None, 401, "unauthenticated"),
            ("not a JWT", "abc", 401, "unauthenticated"),
            ("expired", mint(self.dir, "ES256", exp=int(time.time()) - 120), 401, "unauthenticated"),
            ("not yet valid", mint(self.dir, "ES256", nbf=int(time.time()) + 600), 401, "unauthenticated"),
            ("wrong aud", mint(self.dir, "ES256", aud="someone-else"), 401, "unauthenticated"),
            ("wrong iss", mint(self.dir, "ES256", iss="https://evil.test"), 401, "unauthenticated"),
            ("wrong signature", mint(self.dir, "ES256", kid="stranger"), 401, "unauthenticated"),
            ("alg none", unsigned({"alg": "none", "kid": "es1"}, claims()), 401, "unauthenticated"),
            ("HS256 with the public key", hs256_with_public_key(self.dir), 401, "unauthenticated"),
            ("no exp", pyjwt.encode(claims(exp=None), es1, algorithm="ES256", headers={"kid": "es1"}), 401, "unauthenticated"),
            ("other tenant's partition", mint(self.dir, "ES256", partitions=["other"]), 403, "forbidden"),
            ("tenant mismatch", mint(self.dir, "ES256", tenant="other"), 403, "forbidden"),
        ]
        for what, token, status, problem in cases:
            r = self.call("POST", self.keys(), probe, token=token)
            self.expect(r, status, problem, what)
            if status == 401:
                assert r.headers.get("WWW-Authenticate", "").startswith("Bearer realm="), (what, r.headers)
        # A partition the token names but the service does not serve.
        self.expect(self.call("GET", self.keys("unserved"), token=mint(self.dir, "ES256", partitions=["unserved"])), 404, "partition-not-found")
        # Bodies.
        big = {"label": "must-not-exist", "type": "p256", "id": "A" * 80000}
        self.expect(self.call("POST", self.keys(), big), 413, "body-too-large")
        self.expect(self.call("POST", self.keys(), raw=b'{"label": "must-not-exist", "type": ', headers={"Content-Type": "application/json"}), 400, "malformed-request")
        self.expect(self.call("POST", self.keys(), {"label": "must-not-exist", "type": "p256", "admin": True}), 400, "malformed-request")
        self.expect(self.call("POST", self.keys(), raw=json.dumps(probe), headers={"Content-Type": "text/plain"}), 415, "unsupported-media-type")
        self.expect(self.call("POST", self.keys(), {"label": "bad label!", "type": "p256"}), 400, "invalid-argument")
        self.expect(self.call("POST", self.keys(), {"label": "must-not-exist", "type": "dsa"}), 400, "invalid-argument")
        self.expect(self.call("PUT", self.keys(), probe), 405, "method-not-allowed")
        self.expect(self.call("GET", "/v1/nothing"), 404, "route-not-found")
        # None of them made the key.
        self.expect(self.call("GET", self.keys() + "/must-not-exist"), 404, "key-not-found")
        # The OpenAPI document needs no token.
        doc = self.expect(self.call("GET", "/v1/openapi.json", token=None), 200)
        assert doc["openapi"].startswith("3."), doc.get("openapi")


def main(argv):
    if argv[1] == "keys":
        make_keys(argv[2])
    elif argv[1] == "mint":
        override = json.loads(argv[4]) if len(argv) > 4 else {}
        kid = argv[5] if len(argv) > 5 else None
        print(mint(argv[2], argv[3], kid=kid, **override))
    elif argv[1] == "jwk":
        # The public JWK of a P-256 key of DIR, under the kid given.
        from cryptography.hazmat.primitives import serialization
        with open(os.path.join(argv[2], "jwt-" + argv[3] + ".pem"), "rb") as f:
            n = serialization.load_pem_private_key(f.read(), password=None).public_key().public_numbers()
        print(json.dumps({"kty": "EC", "crv": "P-256", "kid": argv[4], "use": "sig",
                          "x": b64(n.x.to_bytes(32, "big")), "y": b64(n.y.to_bytes(32, "big"))}))
    elif argv[1] == "run":
        suite = Suite(argv[2], argv[3], argv[4])
        suite.api()
        suite.refusals()
        print(json.dumps({"checks": suite.checks}))
    else:
        raise SystemExit("unknown mode " + argv[1])


if __name__ == "__main__":
    main(sys.argv)
